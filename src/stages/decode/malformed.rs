//! The catalogue of malformed messages: examples of every reason decode can
//! give, shared by decode's tests, `scan --malformed-ratio` (which cycles
//! through [`one_per_reason`]) and the integration tests (which publish all
//! of them through a real ingester).

use crate::stages::Reason;
use Reason::*;

/// One malformed message and what decode must say about it.
#[derive(Clone, Copy, Debug)]
pub struct Malformed {
    /// The reason decode gives.
    pub reason: Reason,
    /// Text the rejection's detail contains (often the field at fault), or
    /// `""` where any detail will do.
    pub detail: &'static str,
    /// The message data.
    pub data: &'static [u8],
}

const fn m(reason: Reason, detail: &'static str, data: &'static [u8]) -> Malformed {
    Malformed {
        reason,
        detail,
        data,
    }
}

/// Every example, grouped by reason in [`Reason::ALL`]'s order; all distinct.
/// The first of each reason is what `scan --malformed-ratio` publishes.
#[rustfmt::skip]
pub const MALFORMED: &[Malformed] = &[
    m(InvalidJson, "not JSON", b"this is not json"),
    m(InvalidJson, "not a JSON object", b"[1, 2, 3]"),
    // An array whose items would fit the fields in order: serde reads
    // structs from arrays.
    m(InvalidJson, "not a JSON object", br#"["198.51.100.9", 443, "HTTP", 1700000000, 1, {"response_bytes_utf8": "aGk="}]"#),
    m(InvalidJson, "not a JSON object", b"null"),
    m(InvalidJson, "not a JSON object", br#""a string""#),
    m(InvalidJson, "not JSON", br#"{"ip": "1.2.3.4", "#),
    m(InvalidJson, "not UTF-8", b"\xff\xfe{\"ip\":\"1.2.3.4\"}"),
    m(MissingField, "`ip`", br#"{"port":80,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":{"response_str":"x"}}"#),
    m(MissingField, "`ip`", br#"{"ip":null,"port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(MissingField, "`port`", br#"{"ip":"198.51.100.7","service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(MissingField, "`service`", br#"{"ip":"198.51.100.7","port":443,"timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(MissingField, "`timestamp`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(MissingField, "`data_version`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(MissingField, "`data`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1}"#),
    m(MissingField, "`data`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":null}"#),
    m(InvalidFieldType, "`port`", br#"{"ip":"1.1.1.1","port":"80","service":"HTTP","timestamp":1700000000,"data_version":2,"data":{"response_str":"x"}}"#),
    m(InvalidFieldType, "`port`", br#"{"ip":"198.51.100.7","port":80.5,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidFieldType, "`ip`", br#"{"ip":16909060,"port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidFieldType, "`service`", br#"{"ip":"198.51.100.7","port":443,"service":7,"timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidFieldType, "NUL", br#"{"ip":"198.51.100.7","port":443,"service":"HT\u0000TP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidFieldType, "`timestamp`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1e3,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidFieldType, "`data_version`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":"1","data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidFieldType, "`data`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":[]}"#),
    m(InvalidFieldType, "`data`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":"x"}"#),
    m(InvalidFieldType, "`data.response_str`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":{"response_str":5}}"#),
    m(InvalidFieldType, "`data.response_bytes_utf8`", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":5}}"#),
    m(InvalidIp, "1.1.1.999", br#"{"ip":"1.1.1.999","port":80,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":{"response_str":"x"}}"#),
    m(InvalidIp, "999.1.1.1", br#"{"ip":"999.1.1.1","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidIp, "not-an-ip", br#"{"ip":"not-an-ip","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidIp, "2001:db8::g", br#"{"ip":"2001:db8::g","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidIp, "\"\"", br#"{"ip":"","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(InvalidIp, "1.1.1", br#"{"ip":"1.1.1","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    // A zone index: PostgreSQL's inet has none.
    m(InvalidIp, "fe80::1%eth0", br#"{"ip":"fe80::1%eth0","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(PortOutOfRange, "70000", br#"{"ip":"1.1.1.1","port":70000,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":{"response_str":"x"}}"#),
    m(PortOutOfRange, "65536", br#"{"ip":"198.51.100.7","port":65536,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(PortOutOfRange, "-1", br#"{"ip":"198.51.100.7","port":-1,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(PortOutOfRange, "`port`", br#"{"ip":"198.51.100.7","port":18446744073709551615,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(EmptyService, "`service`", br#"{"ip":"1.1.1.1","port":80,"service":"","timestamp":1700000000,"data_version":2,"data":{"response_str":"x"}}"#),
    m(TimestampOutOfRange, "999999999999999", br#"{"ip":"1.1.1.1","port":80,"service":"HTTP","timestamp":999999999999999,"data_version":2,"data":{"response_str":"x"}}"#),
    m(TimestampOutOfRange, "100000000000000", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":100000000000000,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    // One second before 0001-01-01 and one after 9999-12-31T23:59:59.
    m(TimestampOutOfRange, "-62135596801", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":-62135596801,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(TimestampOutOfRange, "253402300800", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":253402300800,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(TimestampOutOfRange, "18446744073709551615", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":18446744073709551615,"data_version":1,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(UnknownDataVersion, "3", br#"{"ip":"1.1.1.1","port":80,"service":"HTTP","timestamp":1700000000,"data_version":3,"data":{"response_str":"x"}}"#),
    m(UnknownDataVersion, "0", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":0,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(UnknownDataVersion, "18446744073709551615", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":18446744073709551615,"data":{"response_bytes_utf8":"b2s="}}"#),
    m(MissingResponse, "response_bytes_utf8", br#"{"ip":"1.1.1.1","port":80,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{}}"#),
    m(MissingResponse, "response_str", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":{}}"#),
    m(MissingResponse, "response_str", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":2,"data":{"response_bytes_utf8":"aGk="}}"#),
    m(MissingResponse, "response_bytes_utf8", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_str":"hi"}}"#),
    m(MissingResponse, "response_bytes_utf8", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":null}}"#),
    m(InvalidBase64, "response_bytes_utf8", br#"{"ip":"1.1.1.1","port":80,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"%%%"}}"#),
    m(InvalidBase64, "response_bytes_utf8", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"!!not base64!!"}}"#),
    m(InvalidBase64, "response_bytes_utf8", br#"{"ip":"198.51.100.7","port":443,"service":"HTTP","timestamp":1700000000,"data_version":1,"data":{"response_bytes_utf8":"@@@"}}"#),
];

/// The first example of every reason decode gives, in [`Reason::ALL`]'s order.
pub fn one_per_reason() -> impl Iterator<Item = &'static Malformed> {
    Reason::ALL
        .iter()
        .filter_map(|&r| MALFORMED.iter().find(|m| m.reason == r))
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::*;

    #[test]
    fn every_example_decodes_to_its_reason_and_detail() {
        for m in MALFORMED {
            let shown = String::from_utf8_lossy(m.data);
            let rejection = decode(m.data).expect_err(&shown);
            assert_eq!(rejection.reason, m.reason, "{shown}: {rejection}");
            assert!(
                rejection.detail.contains(m.detail),
                "{shown}: detail {:?} lacks {:?}",
                rejection.detail,
                m.detail
            );
        }
    }

    #[test]
    fn every_decode_reason_has_an_example_and_examples_are_distinct() {
        let decode_reasons: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|&r| r != Reason::RejectedByDatabase)
            .collect();
        let first: Vec<Reason> = one_per_reason().map(|m| m.reason).collect();
        assert_eq!(first, decode_reasons);
        let mut data: Vec<&[u8]> = MALFORMED.iter().map(|m| m.data).collect();
        data.sort_unstable();
        data.dedup();
        assert_eq!(data.len(), MALFORMED.len(), "a repeated example");
        // Grouped by reason, in ALL's order.
        let order = |r: Reason| Reason::ALL.iter().position(|&a| a == r);
        assert!(MALFORMED.is_sorted_by_key(|m| order(m.reason)));
    }
}
