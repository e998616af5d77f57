//! DIMSE command sets (PS3.7 §9.3, §E): always implicit VR little endian, group 0000.
//!
//! Only what C-ECHO and C-STORE need: reading a request's fields and writing a response
//! with its Command Group Length.

/// (0000,0000) Command Group Length, UL.
const GROUP_LENGTH: u16 = 0x0000;
/// (0000,0002) Affected SOP Class UID, UI.
const AFFECTED_SOP_CLASS: u16 = 0x0002;
/// (0000,0100) Command Field, US.
const COMMAND_FIELD: u16 = 0x0100;
/// (0000,0110) Message ID, US.
const MESSAGE_ID: u16 = 0x0110;
/// (0000,0120) Message ID Being Responded To, US.
const MESSAGE_ID_RESPONDED: u16 = 0x0120;
/// (0000,0800) Command Data Set Type, US.
const DATA_SET_TYPE: u16 = 0x0800;
/// (0000,0900) Status, US.
const STATUS: u16 = 0x0900;
/// (0000,0902) Error Comment, LO.
const ERROR_COMMENT: u16 = 0x0902;
/// (0000,1000) Affected SOP Instance UID, UI.
const AFFECTED_SOP_INSTANCE: u16 = 0x1000;

/// Command Field values.
pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no dataset follows.
pub const NO_DATA_SET: u16 = 0x0101;

/// Statuses (PS3.4 Annex B.2.3 and PS3.7 Annex C).
pub const SUCCESS: u16 = 0x0000;
/// Refused: out of resources.
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: data set does not match SOP class.
pub const DATASET_MISMATCH: u16 = 0xA900;
/// Error: cannot understand.
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// Refused: SOP class not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Unrecognized operation.
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;

/// The fields of a request command set that halong reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub sop_class: String,
    pub sop_instance: String,
    pub data_set_type: u16,
}

impl Command {
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command set ends inside an element header at byte {0}")]
    TruncatedHeader(usize),
    #[error("command element ({group:04X},{element:04X}) claims {len} bytes but {left} are left")]
    TruncatedValue {
        group: u16,
        element: u16,
        len: u32,
        left: usize,
    },
    #[error("command element ({group:04X},{element:04X}) is outside group 0000")]
    NotCommandGroup { group: u16, element: u16 },
    #[error("command set has no Command Field (0000,0100)")]
    NoCommandField,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn us(v: &[u8]) -> u16 {
    match v {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    }
}

/// Parses a command set (all its PDV fragments concatenated).
pub fn parse(bytes: &[u8]) -> Result<Command, CommandError> {
    let mut cmd = Command::default();
    let mut seen_field = false;
    let mut i = 0;
    while i < bytes.len() {
        let h = bytes
            .get(i..i + 8)
            .ok_or(CommandError::TruncatedHeader(i))?;
        let group = u16::from_le_bytes([h[0], h[1]]);
        let element = u16::from_le_bytes([h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        i += 8;
        if group != 0x0000 {
            return Err(CommandError::NotCommandGroup { group, element });
        }
        let left = bytes.len() - i;
        let v =
            bytes
                .get(i..i.saturating_add(len as usize))
                .ok_or(CommandError::TruncatedValue {
                    group,
                    element,
                    len,
                    left,
                })?;
        i += len as usize;
        match element {
            AFFECTED_SOP_CLASS => cmd.sop_class = text(v),
            COMMAND_FIELD => {
                cmd.field = us(v);
                seen_field = true;
            }
            MESSAGE_ID => cmd.message_id = us(v),
            DATA_SET_TYPE => cmd.data_set_type = us(v),
            AFFECTED_SOP_INSTANCE => cmd.sop_instance = text(v),
            _ => {}
        }
    }
    if !seen_field {
        return Err(CommandError::NoCommandField);
    }
    Ok(cmd)
}

fn put(out: &mut Vec<u8>, element: u16, value: &[u8], pad: u8) {
    let len = value.len() + value.len() % 2;
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

/// A response command set: `field` (C_ECHO_RSP, C_STORE_RSP) answering `request`.
pub fn response(field: u16, request: &Command, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(160);
    if !request.sop_class.is_empty() {
        put(
            &mut body,
            AFFECTED_SOP_CLASS,
            request.sop_class.as_bytes(),
            0,
        );
    }
    put(&mut body, COMMAND_FIELD, &field.to_le_bytes(), 0);
    put(
        &mut body,
        MESSAGE_ID_RESPONDED,
        &request.message_id.to_le_bytes(),
        0,
    );
    put(&mut body, DATA_SET_TYPE, &NO_DATA_SET.to_le_bytes(), 0);
    put(&mut body, STATUS, &status.to_le_bytes(), 0);
    if let Some(c) = comment {
        // LO: at most 64 characters.
        let c: String = c.chars().filter(|c| !c.is_control()).take(64).collect();
        put(&mut body, ERROR_COMMENT, c.as_bytes(), b' ');
    }
    if !request.sop_instance.is_empty() {
        put(
            &mut body,
            AFFECTED_SOP_INSTANCE,
            request.sop_instance.as_bytes(),
            0,
        );
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    put(
        &mut out,
        GROUP_LENGTH,
        &(body.len() as u32).to_le_bytes(),
        0,
    );
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_rq() -> Command {
        Command {
            field: C_STORE_RQ,
            message_id: 7,
            sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance: "1.2.3.4.5".into(),
            data_set_type: 0x0000,
        }
    }

    #[test]
    fn a_response_parses_back_with_its_fields() {
        let rq = store_rq();
        let bytes = response(C_STORE_RSP, &rq, OUT_OF_RESOURCES, Some("disk full"));
        let back = parse(&bytes).unwrap();
        assert_eq!(back.field, C_STORE_RSP);
        assert_eq!(back.sop_class, rq.sop_class);
        assert_eq!(back.sop_instance, rq.sop_instance);
        assert_eq!(back.data_set_type, NO_DATA_SET);
        assert!(!back.has_data_set());
        // Group length covers everything after its own 12 bytes.
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            bytes.len() - 12
        );
        // Odd-length UIDs are padded with NUL to even length.
        assert!(bytes.len().is_multiple_of(2));
    }

    #[test]
    fn status_and_message_id_are_where_ps3_7_puts_them() {
        let bytes = response(
            C_ECHO_RSP,
            &Command {
                message_id: 0x1234,
                ..store_rq()
            },
            SUCCESS,
            None,
        );
        let find = |el: u16| {
            let mut i = 0;
            while i < bytes.len() {
                let e = u16::from_le_bytes([bytes[i + 2], bytes[i + 3]]);
                let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().unwrap()) as usize;
                if e == el {
                    return bytes[i + 8..i + 8 + len].to_vec();
                }
                i += 8 + len;
            }
            panic!("no element {el:04X}");
        };
        assert_eq!(find(MESSAGE_ID_RESPONDED), vec![0x34, 0x12]);
        assert_eq!(find(STATUS), vec![0, 0]);
        assert_eq!(find(COMMAND_FIELD), vec![0x30, 0x80]);
    }

    #[test]
    fn malformed_command_sets_are_named() {
        let good = response(C_STORE_RSP, &store_rq(), SUCCESS, None);
        let table: Vec<(&str, Vec<u8>, CommandError)> = vec![
            (
                "header cut short",
                good[..5].to_vec(),
                CommandError::TruncatedHeader(0),
            ),
            (
                "value cut short",
                good[..10].to_vec(),
                CommandError::TruncatedValue {
                    group: 0,
                    element: 0,
                    len: 4,
                    left: 2,
                },
            ),
            (
                "dataset element in a command",
                vec![0x08, 0, 0x16, 0, 0, 0, 0, 0],
                CommandError::NotCommandGroup {
                    group: 8,
                    element: 0x16,
                },
            ),
            (
                "no command field",
                vec![0, 0, 0x10, 0x01, 2, 0, 0, 0, 1, 0],
                CommandError::NoCommandField,
            ),
        ];
        for (name, bytes, want) in table {
            assert_eq!(parse(&bytes), Err(want), "{name}");
        }
    }
}
