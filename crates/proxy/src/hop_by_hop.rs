//! The part of hop-by-hop header removal inbound and outbound HTTP share: the fields a
//! message's `Connection` header names. Each side keeps its own list of fixed hop-by-hop
//! fields (outbound also keeps `TE: trailers` for gRPC).

use http::header::{self, HeaderMap, HeaderName};

/// RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a
/// message is forwarded and, for each connection-option in this field, remove any header or
/// trailer field(s) from the message with the same name as the connection-option".
pub(crate) fn remove_connection_options(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
}
