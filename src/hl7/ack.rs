//! ACK messages for the MLLP listener: original mode (AA/AE/AR) and enhanced mode
//! (CA/CE/CR), built directly as segment text joined with `\r` (no MLLP framing).
//!
//! Raw MSH fields of the message being acknowledged are copied byte for byte (they are
//! already escaped in the sender's delimiters); decoded values we write (MSH-10 into
//! MSA-2, error texts) are escaped with the sender's delimiters.

use super::escape::escape;
use super::parse::{Delimiters, Header};

/// MSA-1 acknowledgement code (HL7 table 0008).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckCode {
    AA,
    AE,
    AR,
    CA,
    CE,
    CR,
}

/// What the engine decided about a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Error,
    Reject,
}

impl AckCode {
    /// The code for `o`: commit codes (CA/CE/CR) in enhanced mode, else AA/AE/AR.
    pub fn for_outcome(header: &Header, o: Outcome) -> AckCode {
        match (header.enhanced_mode(), o) {
            (false, Outcome::Accept) => AckCode::AA,
            (false, Outcome::Error) => AckCode::AE,
            (false, Outcome::Reject) => AckCode::AR,
            (true, Outcome::Accept) => AckCode::CA,
            (true, Outcome::Error) => AckCode::CE,
            (true, Outcome::Reject) => AckCode::CR,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
}

/// An error reported in MSA-3 and ERR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckError {
    /// HL7 table 0357 code, e.g. 207 application internal error.
    pub code: u16,
    /// Text for the sender; must not contain patient data.
    pub text: String,
}

/// Description of an HL7 table 0357 (message error condition) code.
pub fn table_0357_description(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        104 => "Value too long",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        _ => "Application internal error",
    }
}

/// Builds the ACK for a message whose header could be read.
pub fn build_ack(
    h: &Header,
    code: AckCode,
    err: Option<&AckError>,
    ack_control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let d = h.delimiters();
    let f = d.field.to_string();
    let message_type = if h.trigger_event.is_empty() {
        "ACK".to_string()
    } else {
        let c = d.component;
        format!("ACK{c}{}{c}ACK", escape(&h.trigger_event, &d))
    };
    let msh = [
        "MSH",
        &h.encoding_chars,
        &h.receiving_application,
        &h.receiving_facility,
        &h.sending_application,
        &h.sending_facility,
        timestamp,
        "",
        &message_type,
        ack_control_id,
        &h.processing_id,
        &h.version,
        "",
        "",
        "",
        "",
        &h.charset,
    ];
    let mut out = join_trimmed(&msh, &f);
    out.push('\r');
    out.push_str(&msa_err(&d, code, &h.control_id, err));
    out.into_bytes()
}

/// Builds an ACK when not even MSH could be read: delimiters `|^~\&`, version 2.5,
/// MSA-2 empty.
pub fn build_ack_without_header(
    code: AckCode,
    err: &AckError,
    ack_control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let d = Delimiters::standard();
    let msh = [
        "MSH",
        "^~\\&",
        "",
        "",
        "",
        "",
        timestamp,
        "",
        "ACK",
        ack_control_id,
        "P",
        "2.5",
    ];
    let mut out = join_trimmed(&msh, "|");
    out.push('\r');
    out.push_str(&msa_err(&d, code, "", Some(err)));
    out.into_bytes()
}

/// MSA (and ERR when there is an error); the field separator of MSH-1 follows "MSH"
/// directly, which `join_trimmed` gives by treating "MSH" as field 0.
fn msa_err(d: &Delimiters, code: AckCode, control_id: &str, err: Option<&AckError>) -> String {
    let f = d.field.to_string();
    let ctrl = escape(control_id, d);
    let mut out = match err {
        None => join_trimmed(&["MSA", code.as_str(), &ctrl], &f),
        Some(e) => join_trimmed(&["MSA", code.as_str(), &ctrl, &escape(&e.text, d)], &f),
    };
    if let Some(e) = err {
        let c = d.component;
        let err_code = format!(
            "{}{c}{}{c}HL70357",
            e.code,
            escape(table_0357_description(e.code), d)
        );
        let text = escape(&e.text, d);
        out.push('\r');
        out.push_str(&join_trimmed(
            &["ERR", "", "", &err_code, "E", "", "", "", &text],
            &f,
        ));
    }
    out
}

/// Joins fields with the separator, dropping trailing empty fields.
fn join_trimmed(fields: &[&str], sep: &str) -> String {
    let keep = fields
        .iter()
        .rposition(|f| !f.is_empty())
        .map_or(0, |i| i + 1);
    fields[..keep].join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::read_header;

    fn header(raw: &str) -> Header {
        match read_header(raw.as_bytes()) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    fn ack_text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap_or_default()
    }

    const ORU: &str =
        "MSH|^~\\&|LIS|LAB^1.2.3^ISO|HALONG|BVBM|20240131083000||ORU^R01^ORU_R01|CTRL-1|P|2.5.1\r";

    #[test]
    fn original_mode_aa() {
        let h = header(ORU);
        let code = AckCode::for_outcome(&h, Outcome::Accept);
        assert_eq!(code, AckCode::AA);
        let ack = ack_text(build_ack(&h, code, None, "ACK1", "20240131083001+0700"));
        assert_eq!(
            ack,
            "MSH|^~\\&|HALONG|BVBM|LIS|LAB^1.2.3^ISO|20240131083001+0700||ACK^R01^ACK|ACK1|P|2.5.1\rMSA|AA|CTRL-1"
        );
    }

    #[test]
    fn enhanced_mode_ca() {
        let h = header(
            "MSH|^~\\&|LIS|LAB|HALONG|BVBM|20240131||ORU^R01|C2|P|2.5|||AL|NE||UNICODE UTF-8\r",
        );
        let code = AckCode::for_outcome(&h, Outcome::Accept);
        assert_eq!(code, AckCode::CA);
        assert_eq!(AckCode::for_outcome(&h, Outcome::Reject), AckCode::CR);
        let ack = ack_text(build_ack(&h, code, None, "A2", "20240131083001+0700"));
        assert_eq!(
            ack,
            "MSH|^~\\&|HALONG|BVBM|LIS|LAB|20240131083001+0700||ACK^R01^ACK|A2|P|2.5|||||UNICODE UTF-8\rMSA|CA|C2"
        );
    }

    #[test]
    fn ae_with_err() {
        let h = header(ORU);
        let err = AckError {
            code: 207,
            text: "mapping oru_r01 failed".to_string(),
        };
        let ack = ack_text(build_ack(
            &h,
            AckCode::AE,
            Some(&err),
            "A3",
            "20240131083001+0700",
        ));
        assert_eq!(
            ack,
            "MSH|^~\\&|HALONG|BVBM|LIS|LAB^1.2.3^ISO|20240131083001+0700||ACK^R01^ACK|A3|P|2.5.1\r\
             MSA|AE|CTRL-1|mapping oru_r01 failed\r\
             ERR|||207^Application internal error^HL70357|E||||mapping oru_r01 failed"
        );
    }

    #[test]
    fn custom_delimiters() {
        let h = header("MSH#$*!@#LIS#LAB#HALONG#BVBM#20240131##ORU$R01#C$4#P#2.5\r");
        let err = AckError {
            code: 200,
            text: "no route for ORU$R01".to_string(),
        };
        let ack = ack_text(build_ack(
            &h,
            AckCode::AR,
            Some(&err),
            "A4",
            "20240131083001+0700",
        ));
        assert_eq!(
            ack,
            "MSH#$*!@#HALONG#BVBM#LIS#LAB#20240131083001+0700##ACK$R01$ACK#A4#P#2.5\r\
             MSA#AR#C!S!4#no route for ORU!S!R01\r\
             ERR###200$Unsupported message type$HL70357#E####no route for ORU!S!R01"
        );
    }

    #[test]
    fn empty_trigger() {
        let h = header("MSH|^~\\&|LIS|LAB|||20240131||ACK|C5|P|2.3\r");
        let ack = ack_text(build_ack(
            &h,
            AckCode::AA,
            None,
            "A5",
            "20240131083001+0700",
        ));
        assert_eq!(
            ack,
            "MSH|^~\\&|||LIS|LAB|20240131083001+0700||ACK|A5|P|2.3\rMSA|AA|C5"
        );
    }

    #[test]
    fn escapes_error_text() {
        let h = header(ORU);
        let err = AckError {
            code: 100,
            text: "bad | and ^ and \\ here".to_string(),
        };
        let ack = ack_text(build_ack(
            &h,
            AckCode::AE,
            Some(&err),
            "A6",
            "20240131083001+0700",
        ));
        let tail = ack.split('\r').skip(1).collect::<Vec<_>>();
        assert_eq!(
            tail,
            [
                "MSA|AE|CTRL-1|bad \\F\\ and \\S\\ and \\E\\ here",
                "ERR|||100^Segment sequence error^HL70357|E||||bad \\F\\ and \\S\\ and \\E\\ here"
            ]
        );
    }

    #[test]
    fn without_header() {
        let err = AckError {
            code: 100,
            text: "no MSH segment at start of message".to_string(),
        };
        let ack = ack_text(build_ack_without_header(
            AckCode::AR,
            &err,
            "A7",
            "20240131083001+0700",
        ));
        assert_eq!(
            ack,
            "MSH|^~\\&|||||20240131083001+0700||ACK|A7|P|2.5\r\
             MSA|AR||no MSH segment at start of message\r\
             ERR|||100^Segment sequence error^HL70357|E||||no MSH segment at start of message"
        );
    }
}
