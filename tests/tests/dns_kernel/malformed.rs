//! DNS answers the kernel must fail to read completely: compression loops, cut records,
//! more records, CNAMEs or labels than it reads, TCP segments that do not hold exactly one
//! message. Each carries an address for a name under `bad.test`.

use egress_agent::datapath::test_run_dns::{
    DnsMessage, DnsTransport, TYPE_A, WireName, response_frame,
};

use super::{ANSWER_LIMIT, CLIENT, CNAME_LIMIT, LABEL_LIMIT, RESOLVER, TTL, answer, chained, ip};

/// A name of `count` labels under `bad.test` (which the host policy denies).
pub fn labels_under_bad(count: usize) -> String {
    let mut name = "a.".repeat(count - 2);
    name.push_str("bad.test");
    name
}

/// A name under `bad.test` whose labels take `bytes` bytes on the wire (root excluded).
pub fn of_wire_length(bytes: usize) -> String {
    let mut left = bytes - "\x03bad\x04test".len();
    let mut name = String::new();
    while left > 0 {
        let label = (left - 1).min(63);
        name.push_str(&"z".repeat(label));
        name.push('.');
        left -= label + 1;
    }
    name.push_str("bad.test");
    name
}

/// Answers the kernel must fail to read, each with one address for `x.bad.test`-like names.
pub fn unreadable_answers() -> Vec<(&'static str, Vec<u8>)> {
    let udp = |message: &DnsMessage| {
        response_frame(ip(RESOLVER), ip(CLIENT), DnsTransport::Udp, message.bytes())
    };
    let mut cases = Vec::new();
    // The question is a pointer to itself.
    let mut message = DnsMessage::response(10);
    message.question(&WireName::pointer(12), TYPE_A);
    message.address(&WireName::pointer(12), TTL, ip("203.0.113.100"));
    cases.push(("question points to itself", udp(&message)));
    // The question points forward, at a valid name written later.
    let mut message = DnsMessage::response(11);
    message.question(&WireName::labels_then("x", Some(12 + 2 + 2 + 4)), TYPE_A);
    message.address(&WireName::plain("bad.test"), TTL, ip("203.0.113.101"));
    cases.push(("question points forward", udp(&message)));
    // A CNAME target that loops back to its own start, and one that is a pointer to itself.
    for (what, label) in [
        ("CNAME target loops", "x"),
        ("CNAME target points to itself", ""),
    ] {
        let mut message = DnsMessage::response(12);
        let q = message.question(&WireName::plain("x.bad.test"), TYPE_A);
        let rdata = message.offset() + 2 + 10;
        message.cname(
            &WireName::pointer(q),
            TTL,
            &WireName::labels_then(label, Some(rdata)),
        );
        message.address(&WireName::pointer(q), TTL, ip("203.0.113.102"));
        cases.push((what, udp(&message)));
    }
    // A record cut in its data, and an answer count that promises a record not there.
    let mut message = answer("x.bad.test", &["203.0.113.103"]);
    message.truncate(message.bytes().len() - 2);
    cases.push(("address record cut short", udp(&message)));
    let mut message = answer("x.bad.test", &["203.0.113.104"]);
    message.set_counts(1, 2);
    cases.push(("one answer record missing", udp(&message)));
    let mut message = answer("x.bad.test", &["203.0.113.105"]);
    message.truncate(11);
    cases.push(("shorter than a header", udp(&message)));
    // More records, CNAMEs or labels than the kernel reads.
    let many: Vec<String> = (0..=ANSWER_LIMIT)
        .map(|i| format!("198.51.100.{}", 100 + i))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    cases.push((
        "more answer records than read",
        udp(&answer("x.bad.test", &many)),
    ));
    let chain: Vec<String> = (0..=CNAME_LIMIT)
        .map(|i| format!("c{i}.bad.test"))
        .collect();
    let chain: Vec<&str> = chain.iter().map(String::as_str).collect();
    cases.push((
        "more CNAMEs than read",
        udp(&chained("x.bad.test", &chain, &["203.0.113.130"])),
    ));
    let deep = labels_under_bad(LABEL_LIMIT + 1);
    cases.push((
        "question with too many labels",
        udp(&answer(&deep, &["203.0.113.131"])),
    ));
    cases.push((
        "name of 255 wire bytes",
        udp(&answer(&of_wire_length(255), &["203.0.113.136"])),
    ));
    cases.push((
        "CNAME target with too many labels",
        udp(&chained("x.bad.test", &[&deep], &["203.0.113.132"])),
    ));
    // A label length with the reserved top bits 01.
    let mut message = DnsMessage::response(13);
    message.raw(&[0x41, b'x', 0, 0, 1, 0, 1]);
    message.address(&WireName::plain("x.bad.test"), TTL, ip("203.0.113.133"));
    message.set_counts(1, 1);
    cases.push(("reserved label type", udp(&message)));
    // Larger than the kernel reads: padding after the counted records.
    let mut message = answer("x.bad.test", &["203.0.113.134"]);
    message.raw(&[0; 2048]);
    cases.push(("message over 2047 bytes", udp(&message)));
    // TCP: the length prefix must cover exactly the rest of the segment.
    let message = answer("x.bad.test", &["203.0.113.135"]);
    let len = u16::try_from(message.bytes().len()).expect("short");
    for (what, prefix) in [
        ("TCP prefix too long", len + 1),
        ("TCP prefix too short", len - 1),
    ] {
        let frame = response_frame(
            ip(RESOLVER),
            ip(CLIENT),
            DnsTransport::TcpPrefix(prefix),
            message.bytes(),
        );
        cases.push((what, frame));
    }
    let mut two = message.bytes().to_vec();
    two.extend_from_slice(&len.to_be_bytes());
    two.extend_from_slice(message.bytes());
    cases.push((
        "two TCP messages in one segment",
        response_frame(ip(RESOLVER), ip(CLIENT), DnsTransport::TcpPrefix(len), &two),
    ));
    cases
}
