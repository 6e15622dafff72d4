//! Why a message is a dead letter: one list for every stage that makes dead
//! letters (decode, and the store for rows the database rejects), stored in
//! `dead_letters.reason` and counted as the `reason` label of
//! `miniscan_dead_letters_total`.

use crate::pipeline::outcome::label_enum;

label_enum! {
    /// Why a message is a dead letter. The `as_str` codes are stored in
    /// `dead_letters.reason` and are the `reason` label of
    /// `miniscan_dead_letters_total`, so they are a small fixed set: `ALL`
    /// (which the metrics are zero-initialised from, and the README lists).
    /// Decode's reasons come in the order it checks them, then the store's.
    pub enum Reason {
        /// Not UTF-8, not JSON, or not a JSON object.
        InvalidJson => "invalid_json",
        /// A required field is absent or null.
        MissingField => "missing_field",
        /// A field has the wrong JSON type (e.g. `"port": "80"` or `80.5`).
        InvalidFieldType => "invalid_field_type",
        /// `ip` is not an IPv4 or IPv6 literal.
        InvalidIp => "invalid_ip",
        /// `port` is an integer outside 0..=65535.
        PortOutOfRange => "port_out_of_range",
        /// `service` is the empty string.
        EmptyService => "empty_service",
        /// `timestamp` is outside years 1 to 9999.
        TimestampOutOfRange => "timestamp_out_of_range",
        /// `data_version` is an integer other than 1 or 2.
        UnknownDataVersion => "unknown_data_version",
        /// `data` lacks the response field its version requires.
        MissingResponse => "missing_response",
        /// `data.response_bytes_utf8` is not valid base64.
        InvalidBase64 => "invalid_base64",
        /// The message decodes, but PostgreSQL refuses its row for its data
        /// (SQLSTATE class 22, 23 or 54). Given by the store (the write stage's
        /// or `dead-letters replay`'s upsert), never by decode.
        RejectedByDatabase => "rejected_by_database",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_with_a_distinct_code() {
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{r:?}"
            );
        }
    }
}
