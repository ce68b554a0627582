//! The agent's local allow-list of stream endpoints (`agent_ALLOWED_ENDPOINTS`).
//!
//! A poll job names hosts inside the private network; the allow-list makes
//! sure a compromised or mistaken control plane cannot point the agent at
//! anything else there. The default is empty: nothing is allowed until the
//! operator who installed the agent says which endpoints it may reach.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// One allowed endpoint pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Exact host name (lowercase) or IP address.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
    /// A CIDR range of addresses, matched against literal IPs and resolved addresses.
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: Host,
    /// `None` = any port.
    port: Option<u16>,
    text: String,
}

/// Endpoints poll jobs may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<Rule>,
}

impl AllowList {
    /// Parse a comma-separated list of `host:port`, `*.domain:port`,
    /// `host:*`, `CIDR` or `CIDR:port` (IPv6 addresses in brackets).
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut rules = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            rules.push(parse_rule(item)?);
        }
        Ok(AllowList { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `host:port` may be reached, judged on the name (and on the
    /// address when `host` is an IP literal). Names matched only by a CIDR
    /// rule must be checked again with [`AllowList::allows_addr`] once resolved.
    pub fn allows_name(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let ip: Option<IpAddr> = host.parse().ok();
        self.rules.iter().any(|r| {
            r.port.is_none_or(|p| p == port)
                && match &r.host {
                    Host::Exact(h) => *h == host,
                    Host::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
                    Host::Net(net) => ip.is_some_and(|ip| net.contains(&ip)),
                }
        })
    }

    /// Whether a resolved address is covered by a CIDR rule for `port`.
    pub fn allows_addr(&self, ip: IpAddr, port: u16) -> bool {
        self.rules.iter().any(|r| {
            r.port.is_none_or(|p| p == port)
                && matches!(&r.host, Host::Net(net) if net.contains(&ip))
        })
    }

    /// Check every `host:port` of a bootstrap list; the error names the first
    /// endpoint that is not allowed.
    pub fn check_bootstrap(&self, bootstrap: &str) -> Result<(), String> {
        for (ep, host, port) in endpoints(bootstrap)? {
            if self.allows_name(host, port) {
                continue;
            }
            // A name may still be allowed by a CIDR rule once resolved.
            let by_addr = self.rules.iter().any(|r| matches!(r.host, Host::Net(_)))
                && std::net::ToSocketAddrs::to_socket_addrs(&(host.trim_matches(['[', ']']), port))
                    .map(|mut addrs| {
                        let v: Vec<_> = addrs.by_ref().collect();
                        !v.is_empty() && v.iter().all(|a| self.allows_addr(a.ip(), port))
                    })
                    .unwrap_or(false);
            if !by_addr {
                return Err(format!(
                    "stream endpoint {ep} is not in this agent's agent_ALLOWED_ENDPOINTS ({self}); \
                     add it there on the agent host (for example agent_ALLOWED_ENDPOINTS={ep}) and restart the agent"
                ));
            }
        }
        Ok(())
    }

    /// Check the brokers a cluster at `bootstrap` advertises in its
    /// metadata: librdkafka reads and writes through them, not through the
    /// bootstrap servers, so each must be allowed too. The error names the
    /// first that is not. May resolve names (CIDR rules): call it off the
    /// async threads.
    pub fn check_advertised(&self, bootstrap: &str, advertised: &[String]) -> Result<(), String> {
        match advertised.iter().find(|b| self.check_bootstrap(b).is_err()) {
            None => Ok(()),
            Some(broker) => Err(format!(
                "the cluster at {} advertises broker {broker}, which is not in this agent's \
                 agent_ALLOWED_ENDPOINTS ({self}); nothing was read or written. If that broker \
                 belongs to the cluster, add it there on the agent host (for example \
                 agent_ALLOWED_ENDPOINTS={broker}) and restart the agent; otherwise fix the \
                 brokers' advertised.listeners",
                bootstrap.trim()
            )),
        }
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() {
            return f.write_str("empty: no endpoint allowed");
        }
        let items: Vec<&str> = self.rules.iter().map(|r| r.text.as_str()).collect();
        f.write_str(&items.join(","))
    }
}

/// The entries of a bootstrap list, as (entry, host as written, port).
pub fn endpoints(bootstrap: &str) -> Result<Vec<(&str, &str, u16)>, String> {
    let mut out = Vec::new();
    for ep in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (host, port) = split_host_port(ep)
            .ok_or_else(|| format!("stream endpoint {ep:?} is not host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("stream endpoint {ep:?} has an invalid port"))?;
        out.push((ep, host, port));
    }
    Ok(out)
}

/// Split `host:port`, `[v6]:port`; `None` when there is no port.
pub fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let port = rest[end + 1..].strip_prefix(':')?;
        return Some((&s[..end + 2], port));
    }
    let (h, p) = s.rsplit_once(':')?;
    if h.contains(':') {
        return None;
    }
    Some((h, p))
}

fn parse_rule(item: &str) -> Result<Rule, String> {
    let bad = |why: &str| {
        format!(
            "{item:?} {why}; write host:port, *.domain:port, host:*, or a CIDR range such as 10.0.0.0/8 or 10.0.0.0/8:9092"
        )
    };
    // A bare CIDR (v4 or v6) has no port.
    if let Ok(net) = item.trim_matches(['[', ']']).parse::<IpNet>() {
        return Ok(Rule {
            host: Host::Net(net),
            port: None,
            text: item.to_owned(),
        });
    }
    let (host, port) = split_host_port(item).ok_or_else(|| bad("has no port"))?;
    let port = match port {
        "*" => None,
        p => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has an invalid port"))?,
        ),
    };
    let host_inner = host.trim_matches(['[', ']']).to_ascii_lowercase();
    let host = if let Ok(net) = host_inner.parse::<IpNet>() {
        Host::Net(net)
    } else if let Ok(ip) = host_inner.parse::<IpAddr>() {
        Host::Exact(ip.to_string())
    } else if let Some(suffix) = host_inner.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err(bad("has an invalid wildcard"));
        }
        Host::Suffix(format!(".{suffix}"))
    } else if host_inner.is_empty() || host_inner.contains('*') || host_inner.contains('/') {
        return Err(bad("has an invalid host"));
    } else {
        Host::Exact(host_inner)
    };
    Ok(Rule {
        host,
        port,
        text: item.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_entries_are_split_and_bad_ones_named() {
        assert_eq!(
            endpoints(" a:9092, [::1]:9093 ,").unwrap(),
            vec![("a:9092", "a", 9092), ("[::1]:9093", "[::1]", 9093)]
        );
        assert_eq!(
            endpoints("a:9092,kafka").unwrap_err(),
            "stream endpoint \"kafka\" is not host:port"
        );
        assert_eq!(
            endpoints("a:99999").unwrap_err(),
            "stream endpoint \"a:99999\" has an invalid port"
        );
        // The allow-list check refuses the same entries with the same words.
        let allow = AllowList::parse("127.0.0.1:*").unwrap();
        assert_eq!(
            allow.check_bootstrap("kafka").unwrap_err(),
            "stream endpoint \"kafka\" is not host:port"
        );
    }

    #[test]
    fn matches_exact_wildcard_and_cidr() {
        let a = AllowList::parse(
            "kafka.internal:9092, *.streaming.oci.example.com:9092, 10.0.0.0/8:9093, 127.0.0.1:*",
        )
        .unwrap();
        assert!(a.allows_name("kafka.internal", 9092));
        assert!(a.allows_name("KAFKA.internal", 9092));
        assert!(!a.allows_name("kafka.internal", 9093));
        assert!(a.allows_name("cell-1.streaming.oci.example.com", 9092));
        assert!(!a.allows_name("streaming.oci.example.com", 9092));
        assert!(a.allows_name("10.1.2.3", 9093));
        assert!(!a.allows_name("10.1.2.3", 9092));
        assert!(a.allows_name("127.0.0.1", 1234));
        assert!(!a.allows_name("192.168.1.1", 9092));
    }

    #[test]
    fn empty_list_allows_nothing_and_says_how_to_fix() {
        let a = AllowList::parse("").unwrap();
        let err = a.check_bootstrap("kafka.internal:9092").unwrap_err();
        assert_eq!(
            err,
            "stream endpoint kafka.internal:9092 is not in this agent's agent_ALLOWED_ENDPOINTS (empty: no endpoint allowed); \
             add it there on the agent host (for example agent_ALLOWED_ENDPOINTS=kafka.internal:9092) and restart the agent"
        );
    }

    #[test]
    fn every_bootstrap_entry_is_checked() {
        let a = AllowList::parse("a:1").unwrap();
        assert!(a.check_bootstrap("a:1").is_ok());
        assert!(a.check_bootstrap("a:1,b:1").unwrap_err().contains("b:1"));
    }

    #[test]
    fn bad_rules_are_named() {
        assert!(
            AllowList::parse("kafka")
                .unwrap_err()
                .contains("\"kafka\" has no port")
        );
        assert!(
            AllowList::parse("k:99999")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            AllowList::parse("*.:1")
                .unwrap_err()
                .contains("invalid wildcard")
        );
    }
}
