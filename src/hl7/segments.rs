//! The segment names HL7 v2 defines (versions 2.1 to 2.9), for telling a misspelled
//! segment from a real one. Site-defined segments start with `Z` and are always allowed.

/// Standard segment IDs, sorted.
const STANDARD: &[&str] = &[
    "ABS", "ACC", "ADD", "ADJ", "AFF", "AIG", "AIL", "AIP", "AIS", "AL1", "APR", "ARQ", "ARV",
    "AUT", "BHS", "BLC", "BLG", "BPO", "BPX", "BTS", "BTX", "BUI", "CDM", "CDO", "CER", "CM0",
    "CM1", "CM2", "CNS", "CON", "CSP", "CSR", "CSS", "CTD", "CTI", "DB1", "DEV", "DG1", "DMI",
    "DON", "DPS", "DRG", "DSC", "DSP", "DST", "ECD", "ECR", "EDU", "EQL", "EQP", "EQU", "ERQ",
    "ERR", "EVN", "FAC", "FHS", "FT1", "FTS", "GOL", "GP1", "GP2", "GSC", "GSP", "GSR", "GT1",
    "IAM", "IAR", "IIM", "ILT", "IN1", "IN2", "IN3", "INV", "IPC", "IPR", "ISD", "ITM", "IVC",
    "IVT", "LAN", "LCC", "LCH", "LDP", "LOC", "LRL", "MCP", "MFA", "MFE", "MFI", "MRG", "MSA",
    "MSH", "NCK", "NDS", "NK1", "NPU", "NSC", "NST", "NTE", "OBR", "OBX", "ODS", "ODT", "OH1",
    "OH2", "OH3", "OH4", "OM1", "OM2", "OM3", "OM4", "OM5", "OM6", "OM7", "OMC", "ORC", "ORG",
    "ORO", "OVR", "PAC", "PCE", "PCR", "PD1", "PDA", "PDC", "PEO", "PES", "PID", "PKG", "PM1",
    "PMT", "PR1", "PRA", "PRB", "PRC", "PRD", "PRT", "PSG", "PSH", "PSL", "PSS", "PTH", "PV1",
    "PV2", "PYE", "QAK", "QID", "QPD", "QRD", "QRF", "QRI", "RCP", "RDF", "RDT", "REL", "RF1",
    "RFI", "RGS", "RMI", "ROL", "RQ1", "RQD", "RX1", "RXA", "RXC", "RXD", "RXE", "RXG", "RXO",
    "RXP", "RXR", "RXV", "SAC", "SCD", "SCH", "SCP", "SDD", "SFT", "SGH", "SGT", "SHP", "SID",
    "SLT", "SPM", "SPR", "STF", "STZ", "TCC", "TCD", "TQ1", "TQ2", "TXA", "UAC", "UB1", "UB2",
    "URD", "URS", "VAR", "VND", "VTQ",
];

/// Whether `name` is a segment HL7 v2 defines, or a site-defined `Z` segment.
pub fn is_known_segment(name: &str) -> bool {
    name.starts_with('Z') || STANDARD.binary_search(&name).is_ok()
}

/// The standard segment an unknown `name` most likely meant: the same letters in another
/// order (`PDI` for `PID`), else one letter off, keeping as much of the start as
/// possible (`OBS` for `OBR` rather than `ABS`).
pub fn segment_hint(name: &str) -> Option<&'static str> {
    let sorted = |s: &str| {
        let mut c: Vec<u8> = s.bytes().collect();
        c.sort_unstable();
        c
    };
    let want = sorted(name);
    if let Some(s) = STANDARD.iter().copied().find(|s| sorted(s) == want) {
        return Some(s);
    }
    let b = name.as_bytes();
    let differ = |s: &str| s.bytes().zip(b).filter(|(x, y)| x != *y).count();
    let common_start = |s: &str| s.bytes().zip(b).take_while(|(x, y)| x == *y).count();
    STANDARD
        .iter()
        .copied()
        .filter(|s| s.len() == b.len() && differ(s) == 1)
        .max_by_key(|s| (common_start(s), std::cmp::Reverse(*s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_standard_and_site_segments_and_suggests_the_one_meant() {
        assert!(
            STANDARD.windows(2).all(|w| w[0] < w[1]),
            "sorted, no repeats"
        );
        for ok in ["MSH", "PID", "OBX", "NTE", "SPM", "ZPI", "ZZZ"] {
            assert!(is_known_segment(ok), "{ok}");
        }
        for bad in ["PDI", "XYZ", "OBS", "pid"] {
            assert!(!is_known_segment(bad), "{bad}");
        }
        assert_eq!(segment_hint("PDI"), Some("PID"));
        assert_eq!(segment_hint("OBS"), Some("OBR"));
        assert_eq!(segment_hint("QQQ"), None);
    }
}
