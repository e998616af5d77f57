//! One record as one AMQP message, and back.
//!
//! Body: the record's FHIR R4 JSON. Properties: persistent (delivery mode 2), content
//! type `application/fhir+json`, message id `<resourceType>/<id>/<first 16 hex digits of
//! the SHA-256 of the body>` (the same record published again carries the same id, so a
//! republish is recognisable), and headers `x-halong-journal-id`, `x-halong-route`,
//! `x-halong-listener` naming where the record came from. Routing key: the resource type.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::record::Record;

pub const CONTENT_TYPE: &str = "application/fhir+json";
pub const HEADER_JOURNAL_ID: &str = "x-halong-journal-id";
pub const HEADER_ROUTE: &str = "x-halong-route";
pub const HEADER_LISTENER: &str = "x-halong-listener";

/// A record ready to publish.
pub struct Outgoing {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// Where a record came from, for the headers.
pub struct Origin<'a> {
    pub journal_id: u64,
    pub route: &'a str,
    pub listener: &'a str,
}

/// Builds the message for one record.
pub fn encode(record: &Record, origin: &Origin<'_>) -> Outgoing {
    encode_with(record, None, origin)
}

/// Like [`encode`], with the record's JSON when the caller already has it
/// ([`Record::to_json_vec`] of that very record: the outbox writes it).
pub fn encode_with(record: &Record, json: Option<&[u8]>, origin: &Origin<'_>) -> Outgoing {
    let body = json.map_or_else(|| record.to_json_vec(), <[u8]>::to_vec);
    let rt = record.resource_type().unwrap_or("");
    let id = record.id().unwrap_or("");
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_JOURNAL_ID.into(),
        AMQPValue::LongLongInt(origin.journal_id as i64),
    );
    headers.insert(
        HEADER_ROUTE.into(),
        AMQPValue::LongString(origin.route.into()),
    );
    headers.insert(
        HEADER_LISTENER.into(),
        AMQPValue::LongString(origin.listener.into()),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(message_id(rt, id, &body).into())
        .with_headers(headers);
    Outgoing {
        routing_key: super::Topology::routing_key(rt).to_string(),
        body,
        properties,
    }
}

/// `<resourceType>/<id>/<16 hex digits of SHA-256(body)>`.
pub fn message_id(resource_type: &str, id: &str, body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{resource_type}/{id}/{hex}")
}

/// Why a delivery can never be stored. The text names the problem, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("body is not JSON ({0})")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("no string resourceType")]
    NoResourceType,
    #[error("unknown FHIR R4 resource type")]
    UnknownType,
    #[error("no string id")]
    NoId,
    #[error("the record store refused it: {0}")]
    Refused(String),
}

/// The record in a delivery's body, or why it is poison.
pub fn decode(body: &[u8]) -> Result<Value, Poison> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message names a line and column, never the content.
        Poison::NotJson(e.to_string())
    })?;
    let obj = value.as_object().ok_or(Poison::NotObject)?;
    let rt = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(Poison::NoResourceType)?;
    if !is_r4_resource_type(rt) {
        return Err(Poison::UnknownType);
    }
    if obj.get("id").and_then(Value::as_str).is_none() {
        return Err(Poison::NoId);
    }
    Ok(value)
}

/// A FHIR R4 resource type name (the list the mapping engine checks outputs against).
pub fn is_r4_resource_type(t: &str) -> bool {
    crate::mapping::R4_RESOURCE_TYPES.contains(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_types_are_checked() {
        assert!(is_r4_resource_type("Observation"));
        assert!(is_r4_resource_type("ImagingStudy"));
        assert!(!is_r4_resource_type("Observaton"));
    }

    #[test]
    fn a_republished_record_keeps_its_message_id_and_a_changed_one_does_not() {
        let record = |v: serde_json::Value| Record::from_value(&v).expect("an object");
        let r = record(json!({"resourceType": "Patient", "id": "p1", "gender": "female"}));
        let origin = Origin {
            journal_id: 7,
            route: "adt",
            listener: "his",
        };
        let a = encode(&r, &origin);
        let b = encode(&r, &origin);
        assert_eq!(a.properties.message_id(), b.properties.message_id());
        // With the JSON the outbox made: the same message.
        let json = r.to_json_vec();
        let c = encode_with(&r, Some(&json), &origin);
        assert_eq!(
            (&c.body, c.properties.message_id()),
            (&a.body, a.properties.message_id())
        );
        let id = a.properties.message_id().as_ref().unwrap().to_string();
        assert!(id.starts_with("Patient/p1/"), "{id}");
        assert_eq!(id.len(), "Patient/p1/".len() + 16);
        let changed = encode(
            &record(json!({"resourceType": "Patient", "id": "p1", "gender": "male"})),
            &origin,
        );
        assert_ne!(a.properties.message_id(), changed.properties.message_id());
        assert_eq!(a.routing_key, "Patient");
        assert_eq!(a.properties.delivery_mode(), &Some(2));
        assert_eq!(
            a.properties.content_type().as_ref().unwrap().as_str(),
            CONTENT_TYPE
        );
        let headers = a.properties.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get(HEADER_JOURNAL_ID),
            Some(&AMQPValue::LongLongInt(7))
        );
        assert_eq!(decode(&a.body).unwrap(), r.to_value());
    }

    #[test]
    fn poison_is_named_without_its_content() {
        assert!(matches!(decode(b"Nguyen Van A"), Err(Poison::NotJson(_))));
        assert_eq!(decode(b"[1,2]"), Err(Poison::NotObject));
        assert_eq!(decode(br#"{"id":"x"}"#), Err(Poison::NoResourceType));
        assert_eq!(
            decode(br#"{"resourceType":"Patien","id":"x"}"#),
            Err(Poison::UnknownType)
        );
        assert_eq!(decode(br#"{"resourceType":"Patient"}"#), Err(Poison::NoId));
        let e = decode(b"{\"name\": \"Nguyen Van A\"")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("Nguyen"), "{e}");
    }
}
