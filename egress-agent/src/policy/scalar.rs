//! Validated scalars. Each check runs inside a serde visitor so that serde_yaml attaches the
//! scalar's own position to the error.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

use super::PortRange;
use super::net::Prefix;
use super::probe::{self, PROBE_MESSAGE};

/// Visits a string scalar through `parse`.
struct StrWith<F, T> {
    expecting: &'static str,
    parse: F,
    out: PhantomData<T>,
}

impl<'de, F: FnOnce(&str) -> Result<T, String>, T> Visitor<'de> for StrWith<F, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

fn parse_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_str(StrWith {
        expecting,
        parse,
        out: PhantomData,
    })
}

/// Declares a newtype whose Deserialize parses a string with a function. Its JSON schema (for
/// the Kubernetes CRD) is a string described by `$expecting`: the parser stays the authority.
macro_rules! parsed_string {
    ($(#[$attr:meta])* $name:ident, $inner:ty, $expecting:literal, $parse:expr) => {
        $(#[$attr])*
        pub(crate) struct $name(pub $inner);

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parse_str(d, $expecting, $parse).map(Self)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "description": $expecting})
            }
        }
    };
}

parsed_string!(
    PrefixDe,
    Prefix,
    "a CIDR prefix such as 203.0.113.0/24",
    Prefix::parse
);
parsed_string!(PolicyName, String, "a policy name", |s: &str| {
    if probe::hit_policy_name() {
        return Err(PROBE_MESSAGE.into());
    }
    dns_label(s, "policy name")
});
parsed_string!(RuleName, String, "a rule name", |s: &str| {
    if probe::hit_rule_name() {
        return Err(PROBE_MESSAGE.into());
    }
    let name = dns_label(s, "rule name")?;
    if name == "default" {
        return Err("rule name `default` is reserved for the policy's default action".into());
    }
    if name == super::INBOUND_DEFAULT {
        return Err(
            "rule name `inbound-default` is reserved for the policy's inbound default".into(),
        );
    }
    if name == super::DNS_RESOLVERS || name == super::DNS_OTHER_RESOLVERS {
        return Err(format!(
            "rule name `{name}` is reserved for the rules `spec.dns.resolvers` adds"
        ));
    }
    Ok(name)
});
parsed_string!(HostName, String, "a host name", host_name);
parsed_string!(CgroupPath, String, "a cgroup path", cgroup_path);
parsed_string!(UnitName, String, "a systemd unit name", unit_name);
parsed_string!(ApiVersion, (), "an apiVersion", |s: &str| {
    match s {
        "egress.dev/v1alpha1" => Ok(()),
        _ => Err(format!(
            "unsupported apiVersion `{s}`; expected `egress.dev/v1alpha1`"
        )),
    }
});
parsed_string!(Kind, (), "a kind", |s: &str| match s {
    "EgressPolicy" => Ok(()),
    _ => Err(format!("unsupported kind `{s}`; expected `EgressPolicy`")),
});
parsed_string!(
    NamespaceName,
    String,
    "a Kubernetes namespace name",
    |s: &str| dns_label(s, "namespace name")
);
parsed_string!(
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    LabelKey,
    String,
    "a label key such as app.kubernetes.io/name",
    super::pods::label_key
);
parsed_string!(
    LabelValue,
    String,
    "a label value",
    super::pods::label_value
);

fn dns_label(s: &str, what: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid {what} `{s}`: use 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit"
        ))
    }
}

/// A host pattern, stored canonical: lowercase, without the trailing dot a fully qualified
/// name may carry (the kernel matches names without it).
fn host_name(s: &str) -> Result<String, String> {
    let lower = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if body.len() <= 253 && body.split('.').all(label_ok) {
        Ok(lower)
    } else {
        Err(format!(
            "invalid host `{s}`: expected a DNS name like `api.example.com` or a wildcard like `*.example.com`"
        ))
    }
}

fn cgroup_path(s: &str) -> Result<String, String> {
    let trimmed = s.trim_end_matches('/');
    if !s.starts_with('/') {
        return Err(format!(
            "cgroup path `{s}` must start with `/` (it is relative to the cgroup2 root)"
        ));
    }
    if trimmed.is_empty() {
        return Err("cgroup path `/` selects every process; omit `cgroups` instead".into());
    }
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "cgroup path `{s}` has an empty, `.` or `..` component"
        ));
    }
    Ok(trimmed.to_string())
}

fn unit_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.contains('/')
        && s.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@\\".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid systemd unit name `{s}`: expected a name such as `trainer.service`"
        ))
    }
}

/// A uid; `4294967295` is the kernel's "no uid" and cannot be selected.
pub(crate) struct Uid(pub u32);

impl schemars::JsonSchema for Uid {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Uid".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "minimum": 0, "maximum": 4_294_967_294_u32})
    }
}

impl<'de> serde::Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Uid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a numeric uid")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Uid, E> {
                match u32::try_from(v) {
                    Ok(uid) if uid != u32::MAX => Ok(Uid(uid)),
                    _ => Err(E::custom(format!(
                        "uid {v} is out of range (0 to 4294967294)"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Uid, E> {
                Err(E::custom(format!(
                    "uid {v} is out of range (0 to 4294967294)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `ports` item: `443` or `"8000-8100"`.
pub(crate) struct PortItem(pub PortRange);

impl schemars::JsonSchema for PortItem {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortItem".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Kubernetes' int-or-string: a structural schema cannot say "integer or string" otherwise.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "description": "a port (1-65535) or a range \"first-last\""
        })
    }
}

impl<'de> serde::Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (1-65535) or a range \"first-last\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortItem, E> {
                port(&v.to_string())
                    .map(|p| PortItem(PortRange { first: p, last: p }))
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortItem, E> {
                port(&v.to_string())
                    .map(|p| PortItem(PortRange { first: p, last: p }))
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortItem, E> {
                port_range(v).map(PortItem).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("port 0 is not a valid destination port (ports are 1-65535)".into()),
        Ok(p) => u16::try_from(p).map_err(|_| format!("port {p} is out of range (1-65535)")),
        Err(_) => Err(format!("`{s}` is not a port (1-65535)")),
    }
}

fn port_range(s: &str) -> Result<PortRange, String> {
    let Some((a, b)) = s.split_once('-') else {
        let p = port(s)?;
        return Ok(PortRange { first: p, last: p });
    };
    let (first, last) = (port(a)?, port(b)?);
    if first > last {
        return Err(format!(
            "port range `{s}` is out of order; did you mean \"{last}-{first}\"?"
        ));
    }
    Ok(PortRange { first, last })
}

/// A key that does not belong where it is written: rejected with `message`, whatever its
/// value, at the value's position.
pub(crate) fn rejected<'de, D: Deserializer<'de>>(
    d: D,
    message: String,
) -> Result<Option<()>, D::Error> {
    struct V(String);
    impl V {
        fn fail<E: de::Error>(self) -> Result<Option<()>, E> {
            Err(E::custom(self.0))
        }
    }
    impl<'de> Visitor<'de> for V {
        type Value = Option<()>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("nothing")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            self.fail()
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            self.fail()
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            self.fail()
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            self.fail()
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            self.fail()
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.fail()
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            self.fail()
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            self.fail()
        }
        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            self.fail()
        }
    }
    d.deserialize_any(V(message))
}
