//! A finished delivery's parts on their way to history, packed by Redis' `cmsgpack.pack` (see
//! `scripts/settle.lua`), one MessagePack value after another; and the `v2` field of a history
//! stream entry, which packs the packed deliveries of one settle call in turn, a string each (the
//! previous version's `v1` field held one delivery's). The script packs strings only, or nil where
//! a part is absent, so this reads just those: a string (fixstr, str8/16/32, or bin of the same
//! sizes) or nil (false counts as nil, as in Lua). The gateway packs the parts of a first
//! attempt's success itself, the same way ([`pack`]).

/// Packs `parts` as `cmsgpack.pack` packs Lua strings and nils.
pub(super) fn pack(parts: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.map_or(1, |p| p.len() + 5)).sum());
    for part in parts {
        let Some(part) = part else {
            out.push(0xc0);
            continue;
        };
        let len = part.len();
        if len < 32 {
            out.push(0xa0 | len as u8);
        } else if len <= 0xff {
            out.extend([0xd9, len as u8]);
        } else if len <= 0xffff {
            out.push(0xda);
            out.extend((len as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend((len as u32).to_be_bytes());
        }
        out.extend_from_slice(part);
    }
    out
}

/// The parts of a packed value, in order; `None` when it holds anything but strings and nils, or
/// ends inside a part.
pub(super) fn unpack(mut bytes: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut parts = Vec::with_capacity(10);
    while let Some((&tag, rest)) = bytes.split_first() {
        let (len, rest) = match tag {
            0xc0 | 0xc2 => {
                parts.push(None);
                bytes = rest;
                continue;
            }
            0xa0..=0xbf => (usize::from(tag & 0x1f), rest),
            0xd9 | 0xc4 => length(rest, 1)?,
            0xda | 0xc5 => length(rest, 2)?,
            0xdb | 0xc6 => length(rest, 4)?,
            _ => return None,
        };
        if rest.len() < len {
            return None;
        }
        let (part, rest) = rest.split_at(len);
        parts.push(Some(part));
        bytes = rest;
    }
    Some(parts)
}

/// A big-endian length of `size` bytes at the start of `bytes`, and what follows it.
fn length(bytes: &[u8], size: usize) -> Option<(usize, &[u8])> {
    if bytes.len() < size {
        return None;
    }
    let (len, rest) = bytes.split_at(size);
    Some((len.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)), rest))
}

#[cfg(test)]
mod tests {
    use super::{pack, unpack};

    #[test]
    fn strings_of_every_size_and_nils_come_back_in_order() {
        let long = vec![b'x'; 70_000];
        let mut packed = vec![0xa3, b'a', b'b', b'c', 0xc0, 0xa0, 0xc2];
        packed.extend([0xd9, 40]);
        packed.extend(&long[..40]);
        packed.extend([0xda, 0x01, 0x2c]);
        packed.extend(&long[..300]);
        packed.extend([0xdb, 0x00, 0x01, 0x11, 0x70]);
        packed.extend(&long);
        let parts = unpack(&packed).expect("unpacks");
        let sizes: Vec<Option<usize>> = parts.iter().map(|p| p.map(<[u8]>::len)).collect();
        assert_eq!(sizes, [Some(3), None, Some(0), None, Some(40), Some(300), Some(70_000)]);
        assert_eq!(parts[0], Some(&b"abc"[..]));
    }

    #[test]
    fn what_pack_packs_unpacks_as_it_was() {
        let long = vec![b'y'; 70_000];
        let parts: Vec<Option<&[u8]>> = vec![
            Some(b"dlv_1"),
            None,
            Some(b""),
            Some(&long[..31]),
            Some(&long[..32]),
            Some(&long[..256]),
            Some(&long),
        ];
        assert_eq!(unpack(&pack(&parts)), Some(parts));
        // As cmsgpack packs a 3-byte string and a nil.
        assert_eq!(pack(&[Some(b"abc"), None]), [0xa3, b'a', b'b', b'c', 0xc0]);
    }

    #[test]
    fn a_cut_or_foreign_value_is_refused_not_misread() {
        assert_eq!(unpack(&[0xa3, b'a']), None, "ends inside a string");
        assert_eq!(unpack(&[0xda, 0x01]), None, "ends inside a length");
        assert_eq!(unpack(&[0x05]), None, "a number is not a part the script writes");
        assert_eq!(unpack(&[]), Some(Vec::new()));
    }
}
