//! Helpers shared by the fuzz targets.
//!
//! Most targets feed a byte stream to an incremental decoder and check that how the stream is cut
//! into reads does not matter. [`ReadSizes`] lets the fuzzer choose the cuts.

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};

/// Fuzzer-chosen sizes for successive reads of a stream, used cyclically. Empty means one read of
/// everything.
#[derive(Clone, Debug, Default)]
pub struct ReadSizes(pub Vec<usize>);

impl<'a> Arbitrary<'a> for ReadSizes {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let count = u.int_in_range(0..=16u8)?;
        let mut sizes = Vec::with_capacity(count as usize);
        for _ in 0..count {
            // Mostly small reads (they split headers), sometimes large ones.
            let size = if u.ratio(3, 4)? {
                u.int_in_range(1..=16usize)?
            } else {
                u.int_in_range(1..=4096usize)?
            };
            sizes.push(size);
        }
        Ok(ReadSizes(sizes))
    }
}

impl ReadSizes {
    /// Cuts `input` into consecutive reads of these sizes (cycled; the last read may be shorter).
    pub fn chunks<'i>(&self, input: &'i [u8]) -> impl Iterator<Item = &'i [u8]> {
        let mut rest = input;
        let mut sizes = self.0.clone().into_iter().cycle();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Some(head)
        })
    }
}

pub mod codec;
pub mod wire;
