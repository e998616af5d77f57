//! FHIR R4 (4.0.1) resource type names, for validating `type` in mapping files.

pub const R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Elements every R4 resource (DomainResource) has.
const COMMON_ELEMENTS: &[&str] = &[
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
];

/// The top-level elements of the R4 resource types the shipped mappings make, and of
/// the ones an operator's mapping most likely adds (allergies, conditions, procedures,
/// immunizations, medication orders and administrations, practitioners, organizations,
/// locations); a choice element `value[x]` as each of its names. Output paths into these
/// types are checked at load; other types are not.
#[rustfmt::skip]
const ELEMENTS: &[(&str, &[&str])] = &[
    ("AllergyIntolerance", &[
        "identifier", "clinicalStatus", "verificationStatus", "type", "category",
        "criticality", "code", "patient", "encounter", "onsetDateTime", "onsetAge",
        "onsetPeriod", "onsetRange", "onsetString", "recordedDate", "recorder", "asserter",
        "lastOccurrence", "note", "reaction",
    ]),
    ("Appointment", &[
        "identifier", "status", "cancelationReason", "serviceCategory", "serviceType",
        "specialty", "appointmentType", "reasonCode", "reasonReference", "priority",
        "description", "supportingInformation", "start", "end", "minutesDuration", "slot",
        "created", "comment", "patientInstruction", "basedOn", "participant",
        "requestedPeriod",
    ]),
    ("Condition", &[
        "identifier", "clinicalStatus", "verificationStatus", "category", "severity",
        "code", "bodySite", "subject", "encounter", "onsetDateTime", "onsetAge",
        "onsetPeriod", "onsetRange", "onsetString", "abatementDateTime", "abatementAge",
        "abatementPeriod", "abatementRange", "abatementString", "recordedDate", "recorder",
        "asserter", "stage", "evidence", "note",
    ]),
    ("Coverage", &[
        "identifier", "status", "type", "policyHolder", "subscriber", "subscriberId",
        "beneficiary", "dependent", "relationship", "period", "payor", "class", "order",
        "network", "costToBeneficiary", "subrogation", "contract",
    ]),
    ("DiagnosticReport", &[
        "identifier", "basedOn", "status", "category", "code", "subject", "encounter",
        "effectiveDateTime", "effectivePeriod", "issued", "performer", "resultsInterpreter",
        "specimen", "result", "imagingStudy", "media", "conclusion", "conclusionCode",
        "presentedForm",
    ]),
    ("DocumentReference", &[
        "masterIdentifier", "identifier", "status", "docStatus", "type", "category",
        "subject", "date", "author", "authenticator", "custodian", "relatesTo",
        "description", "securityLabel", "content", "context",
    ]),
    ("Encounter", &[
        "identifier", "status", "statusHistory", "class", "classHistory", "type",
        "serviceType", "priority", "subject", "episodeOfCare", "basedOn", "participant",
        "appointment", "period", "length", "reasonCode", "reasonReference", "diagnosis",
        "account", "hospitalization", "location", "serviceProvider", "partOf",
    ]),
    ("ImagingStudy", &[
        "identifier", "status", "modality", "subject", "encounter", "started", "basedOn",
        "referrer", "interpreter", "endpoint", "numberOfSeries", "numberOfInstances",
        "procedureReference", "procedureCode", "location", "reasonCode", "reasonReference",
        "note", "description", "series",
    ]),
    ("Immunization", &[
        "identifier", "status", "statusReason", "vaccineCode", "patient", "encounter",
        "occurrenceDateTime", "occurrenceString", "recorded", "primarySource",
        "reportOrigin", "location", "manufacturer", "lotNumber", "expirationDate", "site",
        "route", "doseQuantity", "performer", "note", "reasonCode", "reasonReference",
        "isSubpotent", "subpotentReason", "education", "programEligibility",
        "fundingSource", "reaction", "protocolApplied",
    ]),
    ("Location", &[
        "identifier", "status", "operationalStatus", "name", "alias", "description", "mode",
        "type", "telecom", "address", "physicalType", "position", "managingOrganization",
        "partOf", "hoursOfOperation", "availabilityExceptions", "endpoint",
    ]),
    ("MedicationAdministration", &[
        "identifier", "instantiates", "partOf", "status", "statusReason", "category",
        "medicationCodeableConcept", "medicationReference", "subject", "context",
        "supportingInformation", "effectiveDateTime", "effectivePeriod", "performer",
        "reasonCode", "reasonReference", "request", "device", "note", "dosage",
        "eventHistory",
    ]),
    ("MedicationRequest", &[
        "identifier", "status", "statusReason", "intent", "category", "priority",
        "doNotPerform", "reportedBoolean", "reportedReference", "medicationCodeableConcept",
        "medicationReference", "subject", "encounter", "supportingInformation",
        "authoredOn", "requester", "performer", "performerType", "recorder", "reasonCode",
        "reasonReference", "instantiatesCanonical", "instantiatesUri", "basedOn",
        "groupIdentifier", "courseOfTherapyType", "insurance", "note", "dosageInstruction",
        "dispenseRequest", "substitution", "priorPrescription", "detectedIssue",
        "eventHistory",
    ]),
    ("Observation", &[
        "identifier", "basedOn", "partOf", "status", "category", "code", "subject", "focus",
        "encounter", "effectiveDateTime", "effectivePeriod", "effectiveTiming",
        "effectiveInstant", "issued", "performer", "valueQuantity", "valueCodeableConcept",
        "valueString", "valueBoolean", "valueInteger", "valueRange", "valueRatio",
        "valueSampledData", "valueTime", "valueDateTime", "valuePeriod", "dataAbsentReason",
        "interpretation", "note", "bodySite", "method", "specimen", "device",
        "referenceRange", "hasMember", "derivedFrom", "component",
    ]),
    ("Organization", &[
        "identifier", "active", "type", "name", "alias", "telecom", "address", "partOf",
        "contact", "endpoint",
    ]),
    ("Patient", &[
        "identifier", "active", "name", "telecom", "gender", "birthDate", "deceasedBoolean",
        "deceasedDateTime", "address", "maritalStatus", "multipleBirthBoolean",
        "multipleBirthInteger", "photo", "contact", "communication", "generalPractitioner",
        "managingOrganization", "link",
    ]),
    ("Practitioner", &[
        "identifier", "active", "name", "telecom", "address", "gender", "birthDate",
        "photo", "qualification", "communication",
    ]),
    ("Procedure", &[
        "identifier", "instantiatesCanonical", "instantiatesUri", "basedOn", "partOf",
        "status", "statusReason", "category", "code", "subject", "encounter",
        "performedDateTime", "performedPeriod", "performedString", "performedAge",
        "performedRange", "recorder", "asserter", "performer", "location", "reasonCode",
        "reasonReference", "bodySite", "outcome", "report", "complication",
        "complicationDetail", "followUp", "note", "focalDevice", "usedReference",
        "usedCode",
    ]),
    ("RelatedPerson", &[
        "identifier", "active", "patient", "relationship", "name", "telecom", "gender",
        "birthDate", "address", "photo", "period", "communication",
    ]),
    ("ServiceRequest", &[
        "identifier", "instantiatesCanonical", "instantiatesUri", "basedOn", "replaces",
        "requisition", "status", "intent", "category", "priority", "doNotPerform", "code",
        "orderDetail", "quantityQuantity", "quantityRatio", "quantityRange", "subject",
        "encounter", "occurrenceDateTime", "occurrencePeriod", "occurrenceTiming",
        "asNeededBoolean", "asNeededCodeableConcept", "authoredOn", "requester",
        "performerType", "performer", "locationCode", "locationReference", "reasonCode",
        "reasonReference", "insurance", "supportingInfo", "specimen", "bodySite", "note",
        "patientInstruction", "relevantHistory",
    ]),
    ("Specimen", &[
        "identifier", "accessionIdentifier", "status", "type", "subject", "receivedTime",
        "parent", "request", "collection", "processing", "container", "condition", "note",
    ]),
];

/// What is wrong with `element` as a top-level element of `resource_type`, when the
/// type's elements are known: `None` when it is one (or its `_element` companion).
pub fn element_problem(resource_type: &str, element: &str) -> Option<String> {
    let (_, own) = ELEMENTS.iter().find(|(t, _)| *t == resource_type)?;
    let name = element.strip_prefix('_').unwrap_or(element);
    let all = || COMMON_ELEMENTS.iter().chain(own.iter()).copied();
    if all().any(|e| e == name) {
        return None;
    }
    let hint = crate::diag::did_you_mean(element, all())
        .or_else(|| all().find(|e| e.eq_ignore_ascii_case(element)))
        .map_or(String::new(), |h| format!(" (did you mean {h:?}?)"));
    Some(format!("{resource_type} has no element {element:?}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_of_the_shipped_types_are_known_and_typos_named() {
        assert!(ELEMENTS.iter().all(|(t, _)| R4_RESOURCE_TYPES.contains(t)));
        assert_eq!(element_problem("Patient", "gender"), None);
        assert_eq!(element_problem("Patient", "_birthDate"), None);
        assert_eq!(element_problem("Patient", "meta"), None);
        assert_eq!(
            element_problem("Patient", "gendr").as_deref(),
            Some("Patient has no element \"gendr\" (did you mean \"gender\"?)")
        );
        assert_eq!(
            element_problem("Patient", "birthdate").as_deref(),
            Some("Patient has no element \"birthdate\" (did you mean \"birthDate\"?)")
        );
        assert_eq!(
            element_problem("Observation", "valueX").as_deref(),
            Some("Observation has no element \"valueX\"")
        );
        assert_eq!(
            element_problem("Immunization", "lotNumbr").as_deref(),
            Some("Immunization has no element \"lotNumbr\" (did you mean \"lotNumber\"?)")
        );
        // Types without a list are not checked.
        assert_eq!(element_problem("Basic", "anything"), None);
    }
}
