//! Flat parameter sets: the unit that is trained, shipped, validated and averaged.
//!
//! A [`ParamSet`] is a model's parameters as one `Vec<f32>` plus a layout (one
//! [`TensorSpec`] per tensor, in the model's deterministic visit order). Aggregation
//! works on the flat values; burn only sees them when a model is loaded for training
//! or inference ([`crate::net`]).
//!
//! # Wire format ([`ParamSet::to_bytes`], version 1)
//!
//! | bytes | content |
//! |---|---|
//! | 4 | magic `GFPS` |
//! | 2 | format version, little-endian `u16` (= 1) |
//! | 4 | `L`: length of the layout block, little-endian `u32` |
//! | `L` | layout: `postcard` encoding of `Vec<TensorSpec>` |
//! | 8 | `N`: number of values, little-endian `u64` |
//! | `4·N` | the values, little-endian IEEE-754 `f32` |
//!
//! The decoder ([`ParamSet::from_bytes`]) is bounded: it never allocates more than
//! the input's size plus small constants and rejects anything that does not match
//! exactly (see the `MAX_*` constants).
//!
//! [`ParamSet::digest`] is the BLAKE3 hash of exactly these bytes, so a receiver can
//! check a downloaded model against its content address before decoding it
//! ([`digest_bytes`]).

use serde::{Deserialize, Serialize};

/// The four bytes every encoded parameter set starts with.
pub const MAGIC: [u8; 4] = *b"GFPS";
/// The encoding version written by [`ParamSet::to_bytes`].
pub const FORMAT_VERSION: u16 = 1;
/// Upper bound on the encoded layout block (names and shapes), in bytes. Every layout
/// within the other limits fits, so whatever [`ParamSet::new`] accepts round-trips.
pub const MAX_LAYOUT_BYTES: usize = 8 << 20;
/// Upper bound on a tensor name's length, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Upper bound on the number of tensors in a layout.
pub const MAX_TENSORS: usize = 4096;
/// Upper bound on a tensor's rank.
pub const MAX_RANK: usize = 8;
/// Upper bound on the total number of values (256 Mi values, 1 GiB of `f32`).
pub const MAX_VALUES: usize = 1 << 28;

const HEADER_LEN: usize = 4 + 2 + 4;
const DOMAIN_LAYOUT: &[u8] = b"gossipfed.model.layout.v1";

/// Name and shape of one tensor in a [`ParamSet`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Dotted module path, e.g. `convs.0.weight`.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A spec from a name and a shape.
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
        }
    }

    /// Number of elements (`product of shape`), `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// Errors from building or decoding a [`ParamSet`].
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// The number of values does not match what the layout requires.
    #[error("layout needs {expected} values, got {actual}")]
    LengthMismatch {
        /// Values required by the layout.
        expected: usize,
        /// Values present.
        actual: usize,
    },
    /// The layout describes more values, tensors or dimensions than allowed, or overflows.
    #[error("parameter set exceeds limits: {0}")]
    TooLarge(&'static str),
    /// The input does not start with [`MAGIC`].
    #[error("not an encoded parameter set (bad magic)")]
    BadMagic,
    /// The input uses an encoding version this build does not know.
    #[error("unsupported parameter set format version {0}")]
    UnsupportedVersion(u16),
    /// The input ends before the structure it announces.
    #[error("encoded parameter set is truncated")]
    Truncated,
    /// The layout block is not a valid encoding of `Vec<TensorSpec>`.
    #[error("invalid layout block: {0}")]
    BadLayout(#[source] postcard::Error),
    /// The layout block has bytes after the encoded specs.
    #[error("layout block has {0} trailing bytes")]
    TrailingLayoutBytes(usize),
}

/// A model's parameters: a layout and the flat `f32` values in layout order.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    specs: Vec<TensorSpec>,
    values: Vec<f32>,
}

/// Total number of values `specs` needs, checked against the crate limits.
fn total_len(specs: &[TensorSpec]) -> Result<usize, ParamError> {
    if specs.len() > MAX_TENSORS {
        return Err(ParamError::TooLarge("too many tensors"));
    }
    let mut total = 0usize;
    for spec in specs {
        if spec.name.len() > MAX_NAME_LEN {
            return Err(ParamError::TooLarge("tensor name length"));
        }
        if spec.shape.len() > MAX_RANK {
            return Err(ParamError::TooLarge("tensor rank"));
        }
        let n = spec
            .numel()
            .ok_or(ParamError::TooLarge("tensor element count overflows"))?;
        total = total
            .checked_add(n)
            .ok_or(ParamError::TooLarge("total element count overflows"))?;
    }
    if total > MAX_VALUES {
        return Err(ParamError::TooLarge("too many values"));
    }
    Ok(total)
}

/// Appends `v` as a postcard varint (LEB128, 7 bits per byte).
fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The postcard encoding of `specs`, written by hand because it cannot fail
/// (a test checks it is byte-identical to `postcard::to_allocvec`).
fn encode_layout(specs: &[TensorSpec]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + specs.len() * 32);
    push_varint(&mut out, specs.len() as u64);
    for spec in specs {
        push_varint(&mut out, spec.name.len() as u64);
        out.extend_from_slice(spec.name.as_bytes());
        push_varint(&mut out, spec.shape.len() as u64);
        for &d in &spec.shape {
            push_varint(&mut out, d as u64);
        }
    }
    out
}

/// BLAKE3 of an encoded parameter set; equals [`ParamSet::digest`] of the decoded set.
pub fn digest_bytes(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

impl ParamSet {
    /// A parameter set from a layout and values; the values must fill the layout exactly.
    pub fn new(specs: Vec<TensorSpec>, values: Vec<f32>) -> Result<Self, ParamError> {
        let expected = total_len(&specs)?;
        if expected != values.len() {
            return Err(ParamError::LengthMismatch {
                expected,
                actual: values.len(),
            });
        }
        Ok(Self { specs, values })
    }

    /// A parameter set of zeros with the given layout.
    ///
    /// # Panics
    /// If the layout exceeds [`MAX_VALUES`] or the other limits; layouts come from
    /// code ([`crate::net::init_params`]), untrusted ones go through [`ParamSet::new`].
    pub fn zeros(specs: Vec<TensorSpec>) -> Self {
        let n = match total_len(&specs) {
            Ok(n) => n,
            Err(e) => panic!("ParamSet::zeros: {e}"),
        };
        Self {
            specs,
            values: vec![0.0; n],
        }
    }

    /// The layout.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// All values, in layout order.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// All values, mutable (the layout cannot change).
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }

    /// Consumes the set, returning layout and values.
    pub fn into_parts(self) -> (Vec<TensorSpec>, Vec<f32>) {
        (self.specs, self.values)
    }

    /// Number of values (parameters).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the set holds no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Each tensor's spec with its slice of the values.
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorSpec, &[f32])> {
        let mut offset = 0;
        self.specs.iter().map(move |spec| {
            // `new`/`zeros`/`from_bytes` guarantee the layout fits the values.
            let n = spec.numel().unwrap_or(0);
            let slice = &self.values[offset..offset + n];
            offset += n;
            (spec, slice)
        })
    }

    /// Whether `other` has the same layout (names and shapes), i.e. can be averaged with this one.
    pub fn same_layout(&self, other: &ParamSet) -> bool {
        self.specs == other.specs
    }

    /// Content address: BLAKE3 over [`ParamSet::to_bytes`] (layout and little-endian values).
    ///
    /// Computed without materialising the encoding.
    pub fn digest(&self) -> [u8; 32] {
        let layout = encode_layout(&self.specs);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&MAGIC);
        hasher.update(&FORMAT_VERSION.to_le_bytes());
        hasher.update(&(layout.len() as u32).to_le_bytes());
        hasher.update(&layout);
        hasher.update(&(self.values.len() as u64).to_le_bytes());
        let mut buf = [0u8; 4096];
        for chunk in self.values.chunks(buf.len() / 4) {
            for (dst, v) in buf.chunks_exact_mut(4).zip(chunk) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
            hasher.update(&buf[..chunk.len() * 4]);
        }
        *hasher.finalize().as_bytes()
    }

    /// BLAKE3 over the layout only (names and shapes): two sets can be aggregated
    /// iff their layout digests are equal.
    pub fn layout_digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(DOMAIN_LAYOUT);
        hasher.update(&encode_layout(&self.specs));
        *hasher.finalize().as_bytes()
    }

    /// Euclidean norm of all values, accumulated in `f64`.
    pub fn l2_norm(&self) -> f64 {
        self.values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }

    /// Euclidean distance to `other`, `None` if the layouts differ.
    pub fn l2_distance(&self, other: &ParamSet) -> Option<f64> {
        if !self.same_layout(other) {
            return None;
        }
        let sum: f64 = self
            .values
            .iter()
            .zip(&other.values)
            .map(|(&a, &b)| {
                let d = f64::from(a) - f64::from(b);
                d * d
            })
            .sum();
        Some(sum.sqrt())
    }

    /// Whether every value is finite (no NaN or infinity).
    pub fn all_finite(&self) -> bool {
        self.values.iter().all(|v| v.is_finite())
    }

    /// The compact binary encoding described in the [module docs](self).
    pub fn to_bytes(&self) -> Vec<u8> {
        let layout = encode_layout(&self.specs);
        let mut out = Vec::with_capacity(HEADER_LEN + layout.len() + 8 + self.values.len() * 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(layout.len() as u32).to_le_bytes());
        out.extend_from_slice(&layout);
        out.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        // Sized once and filled in place: a loop the compiler turns into plain copies.
        let start = out.len();
        out.resize(start + self.values.len() * 4, 0);
        for (dst, v) in out[start..].chunks_exact_mut(4).zip(&self.values) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes [`ParamSet::to_bytes`] output. Bounded and total: any input either
    /// decodes to a consistent set or returns an error, never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ParamError> {
        let (specs, rest) = parse(bytes)?;
        // Collected from an exact-size iterator: one allocation, no zero-fill pass.
        let values = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { specs, values })
    }
}

/// Where the raw little-endian `f32` values start in a [`ParamSet::to_bytes`] encoding,
/// after checking its header and length as [`ParamSet::from_bytes`] does (for code that
/// works on the encoded values in place).
pub fn values_offset(bytes: &[u8]) -> Result<usize, ParamError> {
    let (_, values) = parse(bytes)?;
    Ok(bytes.len() - values.len())
}

/// Splits a [`ParamSet::to_bytes`] encoding into its layout and its raw values, checking
/// both.
fn parse(bytes: &[u8]) -> Result<(Vec<TensorSpec>, &[u8]), ParamError> {
    let (header, rest) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(ParamError::Truncated)?;
    if header[0..4] != MAGIC {
        return Err(ParamError::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != FORMAT_VERSION {
        return Err(ParamError::UnsupportedVersion(version));
    }
    let layout_len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize;
    if layout_len > MAX_LAYOUT_BYTES {
        return Err(ParamError::TooLarge("layout block"));
    }
    if rest.len() < layout_len {
        return Err(ParamError::Truncated);
    }
    let (layout, rest) = rest.split_at(layout_len);
    let (specs, trailing): (Vec<TensorSpec>, &[u8]) =
        postcard::take_from_bytes(layout).map_err(ParamError::BadLayout)?;
    if !trailing.is_empty() {
        return Err(ParamError::TrailingLayoutBytes(trailing.len()));
    }
    let expected = total_len(&specs)?;
    let (count, rest) = rest.split_first_chunk::<8>().ok_or(ParamError::Truncated)?;
    let count = u64::from_le_bytes(*count);
    if count != expected as u64 {
        return Err(ParamError::LengthMismatch {
            expected,
            actual: usize::try_from(count).unwrap_or(usize::MAX),
        });
    }
    if rest.len() != expected * 4 {
        return Err(ParamError::LengthMismatch {
            expected,
            actual: rest.len() / 4,
        });
    }
    Ok((specs, rest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ParamSet {
        ParamSet::new(
            vec![
                TensorSpec::new("a.weight", vec![2, 3]),
                TensorSpec::new("a.bias", vec![3]),
            ],
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, 0.5, 0.25],
        )
        .unwrap()
    }

    fn arb_param_set() -> impl Strategy<Value = ParamSet> {
        let spec = ("[a-z.0-9]{0,12}", prop::collection::vec(0usize..5, 0..4))
            .prop_map(|(name, shape)| TensorSpec { name, shape });
        prop::collection::vec(spec, 0..6).prop_flat_map(|specs| {
            let n = total_len(&specs).unwrap();
            prop::collection::vec(any::<f32>(), n)
                .prop_map(move |values| ParamSet::new(specs.clone(), values).unwrap())
        })
    }

    #[test]
    fn values_offset_points_at_the_raw_values_of_valid_encodings_only() {
        let p = ParamSet::new(
            vec![TensorSpec::new("w", vec![3]), TensorSpec::new("b", vec![1])],
            vec![1.5, -2.0, 0.25, 7.0],
        )
        .unwrap();
        let bytes = p.to_bytes();
        let at = values_offset(&bytes).unwrap();
        assert_eq!(at, bytes.len() - 16);
        assert_eq!(bytes[at..at + 4], 1.5f32.to_le_bytes());
        assert!(values_offset(&bytes[..bytes.len() - 1]).is_err());
        assert!(values_offset(&bytes[..at]).is_err());
    }

    #[test]
    fn new_checks_length() {
        let specs = vec![TensorSpec::new("w", vec![2, 2])];
        assert!(ParamSet::new(specs.clone(), vec![0.0; 4]).is_ok());
        assert!(matches!(
            ParamSet::new(specs, vec![0.0; 3]),
            Err(ParamError::LengthMismatch {
                expected: 4,
                actual: 3
            })
        ));
        let huge = vec![TensorSpec::new("w", vec![usize::MAX, 2])];
        assert!(matches!(
            ParamSet::new(huge, vec![]),
            Err(ParamError::TooLarge(_))
        ));
    }

    #[test]
    fn zeros_and_accessors() {
        let p = ParamSet::zeros(vec![
            TensorSpec::new("w", vec![2, 2]),
            TensorSpec::new("s", vec![]),
        ]);
        assert_eq!(p.len(), 5); // a rank-0 tensor holds one value
        assert!(!p.is_empty());
        assert_eq!(p.l2_norm(), 0.0);
        let shapes: Vec<usize> = p.tensors().map(|(_, v)| v.len()).collect();
        assert_eq!(shapes, vec![4, 1]);
        assert!(ParamSet::zeros(vec![]).is_empty());
    }

    #[test]
    fn norm_distance_and_finiteness() {
        let mut p = ParamSet::zeros(vec![TensorSpec::new("w", vec![2])]);
        p.values_mut().copy_from_slice(&[3.0, 4.0]);
        assert_eq!(p.l2_norm(), 5.0);
        let z = ParamSet::zeros(vec![TensorSpec::new("w", vec![2])]);
        assert_eq!(p.l2_distance(&z), Some(5.0));
        assert!(p.all_finite());
        p.values_mut()[1] = f32::NAN;
        assert!(!p.all_finite());
        p.values_mut()[1] = f32::INFINITY;
        assert!(!p.all_finite());
        let other = ParamSet::zeros(vec![TensorSpec::new("v", vec![2])]);
        assert_eq!(p.l2_distance(&other), None);
    }

    #[test]
    fn layout_encoding_matches_postcard() {
        let p = sample();
        assert_eq!(
            encode_layout(p.specs()),
            postcard::to_allocvec(&p.specs().to_vec()).unwrap()
        );
        let big = vec![TensorSpec::new("x".repeat(300), vec![70_000, 1, 200])];
        assert_eq!(encode_layout(&big), postcard::to_allocvec(&big).unwrap());
    }

    #[test]
    fn digest_is_content_address() {
        let p = sample();
        assert_eq!(p.digest(), digest_bytes(&p.to_bytes()));
        let mut q = p.clone();
        assert_eq!(p.digest(), q.digest());
        q.values_mut()[4] += 1e-6;
        assert_ne!(p.digest(), q.digest());
        // The layout digest ignores values but not names or shapes.
        assert_eq!(p.layout_digest(), q.layout_digest());
        let renamed = ParamSet::new(
            vec![
                TensorSpec::new("a.weight", vec![2, 3]),
                TensorSpec::new("b.bias", vec![3]),
            ],
            p.values().to_vec(),
        )
        .unwrap();
        assert_ne!(p.layout_digest(), renamed.layout_digest());
        assert_ne!(p.digest(), renamed.digest());
        let reshaped = ParamSet::new(
            vec![
                TensorSpec::new("a.weight", vec![3, 2]),
                TensorSpec::new("a.bias", vec![3]),
            ],
            p.values().to_vec(),
        )
        .unwrap();
        assert_ne!(p.layout_digest(), reshaped.layout_digest());
        assert!(!p.same_layout(&reshaped));
    }

    #[test]
    fn from_bytes_rejects_malformed_input() {
        let bytes = sample().to_bytes();
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(
            ParamSet::from_bytes(&bad),
            Err(ParamError::BadMagic)
        ));
        let mut bad = bytes.clone();
        bad[4] = 9;
        assert!(matches!(
            ParamSet::from_bytes(&bad),
            Err(ParamError::UnsupportedVersion(9))
        ));
        for cut in 0..bytes.len() {
            assert!(ParamSet::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut long = bytes.clone();
        long.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            ParamSet::from_bytes(&long),
            Err(ParamError::LengthMismatch { .. })
        ));
        // A count field that disagrees with the layout.
        let layout_len = u32::from_le_bytes(bytes[6..10].try_into().unwrap()) as usize;
        let count_at = HEADER_LEN + layout_len;
        let mut bad = bytes.clone();
        bad[count_at] = 200;
        assert!(matches!(
            ParamSet::from_bytes(&bad),
            Err(ParamError::LengthMismatch { .. })
        ));
        // A layout length beyond the bound.
        let mut bad = bytes;
        bad[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ParamSet::from_bytes(&bad),
            Err(ParamError::TooLarge(_))
        ));
    }

    #[test]
    fn encoding_is_compact() {
        let p = ParamSet::zeros(vec![TensorSpec::new("w", vec![1000])]);
        let bytes = p.to_bytes();
        assert!(bytes.len() < 4000 + 32, "{} bytes", bytes.len());
    }

    proptest! {
        #[test]
        fn round_trip(p in arb_param_set()) {
            let bytes = p.to_bytes();
            let q = ParamSet::from_bytes(&bytes).unwrap();
            // Compare bitwise: NaN != NaN under PartialEq.
            prop_assert_eq!(p.specs(), q.specs());
            let a: Vec<u32> = p.values().iter().map(|v| v.to_bits()).collect();
            let b: Vec<u32> = q.values().iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(a, b);
            prop_assert_eq!(p.digest(), q.digest());
            prop_assert_eq!(p.digest(), digest_bytes(&bytes));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = ParamSet::from_bytes(&bytes);
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            prefixed.extend_from_slice(&bytes);
            let _ = ParamSet::from_bytes(&prefixed);
        }

        #[test]
        fn mutated_encodings_never_panic(
            p in arb_param_set(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = p.to_bytes();
            for (i, b) in edits {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            if let Ok(q) = ParamSet::from_bytes(&bytes) {
                prop_assert_eq!(total_len(q.specs()).unwrap(), q.len());
            }
        }
    }
}
