//! HL7 v2 over MLLP: accept connections, frame messages, journal them, ACK after commit.
//!
//! Invariant: an accepting ACK (AA/CA) is written to the socket only after
//! [`Journal::append`](crate::journal::Journal::append) has returned, that is after the raw
//! message is on disk. Every frame, good or bad, leaves a journal entry, except when the
//! journal itself fails, in which case the sender gets AE/CE and should resend.

mod codec;
mod conn;

pub use codec::{frame, MllpCodec, MllpError, CR, EB, SB};
pub use conn::{serve, MllpSettings, RouteCheck};
