//! `LZString.decompressFromBase64`, the `compression=lz64` encoding of
//! posthog-js and PostHog's mobile SDKs. Bounded: the output and the
//! dictionary together (entries counted with their allocation overhead) may
//! not take more than `max_bytes`, so a small hostile input cannot make a
//! large allocation.

const ALPHABET: &[u8; 65] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

struct Bits<'a> {
    input: &'a [u8],
    index: usize,
    value: u32,
    position: u32,
}

impl Bits<'_> {
    fn sextet(c: u8) -> u32 {
        ALPHABET.iter().position(|&a| a == c).map_or(0, |p| p as u32)
    }

    /// The next `n` bits, least significant first (as LZString writes them).
    fn read(&mut self, n: u32) -> Option<u32> {
        let mut bits = 0;
        for i in 0..n {
            let bit = self.value & self.position;
            self.position >>= 1;
            if self.position == 0 {
                self.position = 32;
                self.value = Self::sextet(*self.input.get(self.index)?);
                self.index += 1;
            }
            if bit != 0 {
                bits |= 1 << i;
            }
        }
        Some(bits)
    }
}

/// What one dictionary entry costs besides its code units: the `Vec` and its allocation.
const ENTRY_OVERHEAD: usize = 48;

/// The decompressed text, or `None` for input that is not LZString base64 or that would
/// take more than `max_bytes` of output and dictionary.
pub fn decompress_from_base64(input: &str, max_bytes: usize) -> Option<String> {
    let input = input.trim().as_bytes();
    let first = *input.first()?;
    let mut bits = Bits { input, index: 1, value: Bits::sextet(first), position: 32 };
    let mut dictionary: Vec<Vec<u16>> = (0..3).map(|i| vec![i as u16]).collect();
    let mut budget = max_bytes;
    // Bytes, for `units` UTF-16 code units held `copies` times and `entries` new dictionary entries.
    let mut take = |units: usize, copies: usize, entries: usize| -> Option<()> {
        budget = budget.checked_sub(units * 2 * copies + entries * ENTRY_OVERHEAD)?;
        Some(())
    };
    let c = match bits.read(2)? {
        0 => bits.read(8)? as u16,
        1 => bits.read(16)? as u16,
        _ => return Some(String::new()),
    };
    dictionary.push(vec![c]);
    let mut w = vec![c];
    let mut result: Vec<u16> = vec![c];
    let (mut enlarge_in, mut num_bits) = (4u32, 3u32);
    loop {
        if bits.index > input.len() + 1 {
            return None;
        }
        let code = match bits.read(num_bits)? {
            0 => {
                let ch = bits.read(8)? as u16;
                dictionary.push(vec![ch]);
                take(1, 1, 1)?;
                enlarge_in -= 1;
                dictionary.len() - 1
            }
            1 => {
                let ch = bits.read(16)? as u16;
                dictionary.push(vec![ch]);
                take(1, 1, 1)?;
                enlarge_in -= 1;
                dictionary.len() - 1
            }
            2 => return String::from_utf16(&result).ok(),
            n => n as usize,
        };
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
        let entry = match dictionary.get(code) {
            Some(e) => e.clone(),
            None if code == dictionary.len() => {
                let mut e = w.clone();
                e.push(w[0]);
                e
            }
            None => return None,
        };
        // The entry joins the output and, one unit longer, the dictionary.
        take(entry.len() + 1, 2, 1)?;
        result.extend_from_slice(&entry);
        let mut next = w;
        next.push(entry[0]);
        dictionary.push(next);
        enlarge_in -= 1;
        w = entry;
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decompress_from_base64;

    #[test]
    fn known_lzstring_outputs_decompress() {
        // Outputs of lz-string 1.5.0's `compressToBase64`.
        assert_eq!(decompress_from_base64("BYUwNmD2Q===", 100_000).as_deref(), Some("hello"));
        assert_eq!(
            decompress_from_base64("N4IgpgbmB2AuIC4QA8QBoQAcBOB7TY2sAlmAM6LAC+VQA===", 100_000).as_deref(),
            Some(r#"{"event":"x","properties":{}}"#)
        );
        let event = "NobwRApgbhB2AuYBcYAkAHAhgc2gSwgHcwAaMdAJwHt0IL4CBnZcAEz0YdgGN4B9PK2RgArgEZSYeFQDWcYRFYy+AD0mpuIihTj8tAG2EALePHSMkAekuYAdBBWYAtun0RLAH8kiRg4RIBfAIBdIA===";
        assert_eq!(
            decompress_from_base64(event, 100_000).as_deref(),
            Some(
                r#"[{"event":"$pageview","properties":{"distinct_id":"u1","token":"edk_x","$current_url":"https://a.example/ü","uuid":"1"}}]"#
            )
        );
        assert_eq!(decompress_from_base64("IYI17SOyg===", 100_000).as_deref(), Some("abababababababababababab"));
        assert_eq!(decompress_from_base64("BYUwNmD2Q===", 40), None, "over the bound");
        assert_eq!(decompress_from_base64("", 100_000), None);
    }
}
