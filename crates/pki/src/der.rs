//! A minimal DER tag-length-value reader and writer, just enough to re-wrap private keys
//! (PKCS#8 → PKCS#1 / SEC1) in [`crate::keys`]. Certificates are parsed with x509-parser and
//! webpki, never here.

/// One DER element: its tag byte, its contents, and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const OCTET_STRING: u8 = 0x04;

/// Reads one element from the front of `input`; returns it and the rest.
/// Only single-byte tags and definite lengths up to 4 length octets (all keys fit).
pub(crate) fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tag: never in the structures we read
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None; // indefinite length is not DER; >4 octets is absurd here
        }
        let (octets, after) = rest.split_at(n);
        rest = after;
        octets
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    let (value, rest) = rest.split_at(len);
    Some((
        Tlv {
            tag,
            value,
            raw: &input[..header + len],
        },
        rest,
    ))
}

/// Reads `input` as exactly one element with tag `tag` (no trailing bytes).
pub(crate) fn read_exact(input: &[u8], tag: u8) -> Option<Tlv<'_>> {
    match read(input)? {
        (tlv, []) if tlv.tag == tag => Some(tlv),
        _ => None,
    }
}

/// Appends the DER encoding of `tag` + `value` to `out`.
pub(crate) fn write(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_short_and_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let value = vec![0xab; len];
            let mut enc = Vec::new();
            write(OCTET_STRING, &value, &mut enc);
            enc.extend_from_slice(b"tail");
            let (tlv, rest) = read(&enc).unwrap();
            assert_eq!(tlv.tag, OCTET_STRING);
            assert_eq!(tlv.value, &value[..]);
            assert_eq!(tlv.raw.len(), enc.len() - 4);
            assert_eq!(rest, b"tail");
        }
    }

    #[test]
    fn rejects_truncated_and_indefinite() {
        assert!(read(&[0x30, 0x05, 1, 2]).is_none());
        assert!(read(&[0x30, 0x80, 0, 0]).is_none());
        assert!(read(&[0x30]).is_none());
        assert!(
            read_exact(&[0x04, 0x00, 0x00], OCTET_STRING).is_none(),
            "trailing byte"
        );
        assert!(read_exact(&[0x04, 0x00], SEQUENCE).is_none(), "wrong tag");
    }
}
