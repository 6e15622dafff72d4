//! The error decode returns for a message that does not decode.

use crate::stages::Reason;

/// A message that does not decode, with its reason and a readable detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    /// The code.
    pub reason: Reason,
    /// What exactly was wrong (never contains NUL, so it fits a `text` column).
    pub detail: String,
}

pub(super) fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    let mut detail = detail.into();
    if detail.contains('\0') {
        detail = detail.replace('\0', "\u{FFFD}");
    }
    Rejection { reason, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_never_holds_nul() {
        assert_eq!(reject(Reason::InvalidIp, "a\0b").detail, "a\u{FFFD}b");
    }
}
