//! Host names and host patterns: their canonical form and how a pattern matches a name.
//!
//! The kernel compares names byte for byte in a trie ([`egress_common::dns::host_key`]), so
//! everything here works on one canonical spelling: ASCII lowercase, no trailing dot.

/// Longest name in text form (255 wire bytes).
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// The canonical form of a DNS name or host pattern: ASCII-lowercased, one trailing dot
/// removed. `None` when it is no name at all: empty, an empty label (`a..b`, a leading dot),
/// a label over 63 bytes, more than 253 bytes, or a 0 byte (which no pattern can hold).
/// Other bytes are kept as they are: a name with `_` or non-ASCII labels is a name, one no
/// pattern of the policy language can match.
pub fn canonical_name(name: &str) -> Option<String> {
    let body = name.strip_suffix('.').unwrap_or(name);
    let ok = !body.is_empty()
        && body.len() <= MAX_NAME
        && !body.contains('\0')
        && body
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= MAX_LABEL);
    ok.then(|| body.to_ascii_lowercase())
}

/// Whether host `pattern` (an exact name, or `*.` and a base name) matches `name`.
/// A wildcard matches names with one or more labels before its base, never the base
/// itself. Case-insensitive; a trailing dot on either side is ignored.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(base) => {
            // `name` = one or more labels, a dot, then `base`.
            name.len() > base.len() + 1 && name.is_char_boundary(name.len() - base.len() - 1) && {
                let (head, tail) = name.split_at(name.len() - base.len() - 1);
                !head.is_empty()
                    && tail.as_bytes()[0] == b'.'
                    && tail[1..].eq_ignore_ascii_case(base)
            }
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// The base name of a wildcard pattern (`*.example.com` → `example.com`), `None` for an
/// exact pattern.
pub fn wildcard_base(pattern: &str) -> Option<&str> {
    pattern.strip_prefix("*.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_ignore_case_and_trailing_dots() {
        assert!(host_matches("api.example.com", "API.Example.com."));
        assert!(host_matches("api.example.com.", "api.example.com"));
        assert!(!host_matches("api.example.com", "xapi.example.com"));
        assert!(!host_matches("api.example.com", "example.com"));
    }

    #[test]
    fn wildcards_need_at_least_one_label_before_the_base() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.Example.COM.", "b.a.EXAMPLE.com."));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "example.com."));
        assert!(!host_matches("*.example.com", "aexample.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(!host_matches("*.example.com", "a.example.org"));
    }

    #[test]
    fn non_ascii_names_never_split_a_character() {
        assert!(!host_matches("*.b", "é.b\u{e9}"));
        assert!(host_matches("*.b", "é.b"));
    }

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("API.Example.com.").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            canonical_name("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        for bad in ["", ".", "a..b", ".a", "a.b..", "a\0b"] {
            assert_eq!(canonical_name(bad), None, "{bad:?}");
        }
        assert_eq!(canonical_name(&"a".repeat(64)), None);
        assert!(canonical_name(&vec!["a".repeat(63); 4].join(".")).is_none());
        assert!(canonical_name(&vec!["a".repeat(62); 4].join(".")).is_some());
    }
}
