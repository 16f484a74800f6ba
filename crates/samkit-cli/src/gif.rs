//! A small animated-GIF writer for the frames plotters renders into an RGB buffer.
//!
//! plotters' own GIF backend quantizes every frame with NeuQuant, which takes most of a
//! minute for a 30-frame animation in a debug build. Plots have few colours, so an exact
//! palette (or the 256 most frequent colours, the rest mapped to the nearest of them) is both
//! faster and sharper. LZW coding follows the GIF89a specification (variable code width up to
//! 12 bits, a clear code when the table is full).
use std::collections::HashMap;
use std::io::Write;

/// Writes the GIF header and frames to any writer.
pub struct GifWriter<W: Write> {
    out: W,
    width: u16,
    height: u16,
    /// Frame delay in hundredths of a second.
    delay: u16,
}

impl<W: Write> GifWriter<W> {
    /// Header, logical screen descriptor (no global colour table) and the NETSCAPE2.0
    /// extension that loops the animation forever.
    pub fn new(mut out: W, width: u16, height: u16, delay_cs: u16) -> std::io::Result<Self> {
        out.write_all(b"GIF89a")?;
        out.write_all(&width.to_le_bytes())?;
        out.write_all(&height.to_le_bytes())?;
        out.write_all(&[0x00, 0x00, 0x00])?;
        out.write_all(&[0x21, 0xFF, 0x0B])?;
        out.write_all(b"NETSCAPE2.0")?;
        out.write_all(&[0x03, 0x01, 0x00, 0x00, 0x00])?;
        Ok(GifWriter {
            out,
            width,
            height,
            delay: delay_cs,
        })
    }

    /// One frame from `width × height` RGB pixels (3 bytes each).
    pub fn add_frame(&mut self, rgb: &[u8]) -> std::io::Result<()> {
        let n = self.width as usize * self.height as usize;
        if rgb.len() != 3 * n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("frame has {} bytes, expected {}", rgb.len(), 3 * n),
            ));
        }
        let (palette, indices) = quantize(rgb);
        // Graphic control extension: the delay, no transparency.
        self.out.write_all(&[0x21, 0xF9, 0x04, 0x00])?;
        self.out.write_all(&self.delay.to_le_bytes())?;
        self.out.write_all(&[0x00, 0x00])?;
        // Image descriptor with a local colour table of 256 entries.
        self.out.write_all(&[0x2C, 0, 0, 0, 0])?;
        self.out.write_all(&self.width.to_le_bytes())?;
        self.out.write_all(&self.height.to_le_bytes())?;
        self.out.write_all(&[0x87])?;
        let mut table = [0u8; 768];
        for (i, c) in palette.iter().enumerate() {
            table[3 * i..3 * i + 3].copy_from_slice(c);
        }
        self.out.write_all(&table)?;
        self.out.write_all(&[8])?;
        let data = lzw_encode(&indices, 8);
        for block in data.chunks(255) {
            self.out.write_all(&[block.len() as u8])?;
            self.out.write_all(block)?;
        }
        self.out.write_all(&[0])
    }

    /// The trailer; returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&[0x3B])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A palette of at most 256 colours and one index per pixel: the exact colours when there are
/// few enough, else the 256 most frequent ones with every other colour mapped to its nearest.
pub fn quantize(rgb: &[u8]) -> (Vec<[u8; 3]>, Vec<u8>) {
    let key = |p: &[u8]| (p[0] as u32) << 16 | (p[1] as u32) << 8 | p[2] as u32;
    let mut counts: HashMap<u32, u32> = HashMap::new();
    let mut last = (u32::MAX, 0u32);
    for p in rgb.chunks_exact(3) {
        let k = key(p);
        if k == last.0 {
            last.1 += 1;
            continue;
        }
        if last.1 > 0 {
            *counts.entry(last.0).or_insert(0) += last.1;
        }
        last = (k, 1);
    }
    if last.1 > 0 {
        *counts.entry(last.0).or_insert(0) += last.1;
    }
    let mut colours: Vec<(u32, u32)> = counts.into_iter().collect();
    // Most frequent first, ties by colour: a pure function of the frame.
    colours.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    colours.truncate(256);
    let split = |k: u32| [(k >> 16) as u8, (k >> 8) as u8, k as u8];
    let palette: Vec<[u8; 3]> = colours.iter().map(|&(k, _)| split(k)).collect();
    let mut index: HashMap<u32, u8> = colours
        .iter()
        .enumerate()
        .map(|(i, &(k, _))| (k, i as u8))
        .collect();
    let nearest = |c: [u8; 3]| -> u8 {
        let d = |p: &[u8; 3]| -> i32 {
            (0..3)
                .map(|i| (p[i] as i32 - c[i] as i32).pow(2))
                .sum::<i32>()
        };
        let mut best = (i32::MAX, 0u8);
        for (i, p) in palette.iter().enumerate() {
            let di = d(p);
            if di < best.0 {
                best = (di, i as u8);
            }
        }
        best.1
    };
    let mut out = Vec::with_capacity(rgb.len() / 3);
    let mut last = (u32::MAX, 0u8);
    for p in rgb.chunks_exact(3) {
        let k = key(p);
        if k != last.0 {
            let i = match index.get(&k) {
                Some(&i) => i,
                None => {
                    let i = nearest(split(k));
                    index.insert(k, i);
                    i
                }
            };
            last = (k, i);
        }
        out.push(last.1);
    }
    (palette, out)
}

/// Packs codes least-significant bit first.
struct BitWriter {
    bytes: Vec<u8>,
    acc: u32,
    nbits: u32,
}

impl BitWriter {
    fn put(&mut self, code: u16, width: u32) {
        self.acc |= (code as u32) << self.nbits;
        self.nbits += width;
        while self.nbits >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.nbits -= 8;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.nbits > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// GIF's variable-width LZW of `indices` (each `< 2^min_code_size`).
pub fn lzw_encode(indices: &[u8], min_code_size: u32) -> Vec<u8> {
    let clear = 1u16 << min_code_size;
    let eoi = clear + 1;
    let first_free = clear + 2;
    let alphabet = 1usize << min_code_size;
    // children[code * alphabet + symbol]: the code of `code`'s string followed by `symbol`,
    // 0 when absent (0 is never a child: children are >= first_free).
    let mut children = vec![0u16; 4096 * alphabet];
    let mut next = first_free;
    let mut width = min_code_size + 1;
    let mut w = BitWriter {
        bytes: Vec::with_capacity(indices.len() / 2),
        acc: 0,
        nbits: 0,
    };
    w.put(clear, width);
    let Some((&first, rest)) = indices.split_first() else {
        w.put(eoi, width);
        return w.finish();
    };
    let mut code = first as u16;
    for &s in rest {
        let slot = code as usize * alphabet + s as usize;
        let child = children[slot];
        if child != 0 {
            code = child;
            continue;
        }
        w.put(code, width);
        if next < 4096 {
            if next == 1 << width {
                width += 1;
            }
            children[slot] = next;
            next += 1;
        } else {
            w.put(clear, width);
            children[..4096 * alphabet].fill(0);
            next = first_free;
            width = min_code_size + 1;
        }
        code = s as u16;
    }
    w.put(code, width);
    w.put(eoi, width);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference LZW decoder (GIF variant) for round trips.
    fn lzw_decode(data: &[u8], min_code_size: u32) -> Vec<u8> {
        let clear = 1usize << min_code_size;
        let eoi = clear + 1;
        let mut table: Vec<Vec<u8>> = Vec::new();
        let reset = |t: &mut Vec<Vec<u8>>| {
            t.clear();
            for i in 0..clear {
                t.push(vec![i as u8]);
            }
            t.push(Vec::new());
            t.push(Vec::new());
        };
        reset(&mut table);
        let mut width = min_code_size + 1;
        let (mut acc, mut nbits, mut pos) = (0u32, 0u32, 0usize);
        let mut out = Vec::new();
        let mut prev: Option<usize> = None;
        loop {
            while nbits < width {
                acc |= (data[pos] as u32) << nbits;
                pos += 1;
                nbits += 8;
            }
            let code = (acc & ((1 << width) - 1)) as usize;
            acc >>= width;
            nbits -= width;
            if code == clear {
                reset(&mut table);
                width = min_code_size + 1;
                prev = None;
                continue;
            }
            if code == eoi {
                return out;
            }
            let entry = if code < table.len() {
                table[code].clone()
            } else {
                let p = &table[prev.expect("a KwKwK code follows a code")];
                let mut e = p.clone();
                e.push(p[0]);
                e
            };
            out.extend_from_slice(&entry);
            if let Some(p) = prev {
                if table.len() < 4096 {
                    let mut e = table[p].clone();
                    e.push(entry[0]);
                    table.push(e);
                    if table.len() == 1 << width && width < 12 {
                        width += 1;
                    }
                }
            }
            prev = Some(code);
        }
    }

    #[test]
    fn lzw_round_trips() {
        let mut rng = crate::rng::Rng::new(1);
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![7],
            vec![0; 100_000],
            (0..50_000).map(|i| (i % 7) as u8).collect(),
            (0..200_000).map(|_| rng.below(256) as u8).collect(),
            (0..120_000).map(|_| (rng.below(4) * 60) as u8).collect(),
        ];
        for c in cases {
            assert_eq!(lzw_decode(&lzw_encode(&c, 8), 8), c, "length {}", c.len());
        }
    }

    #[test]
    fn quantize_is_exact_for_few_colours_and_nearest_otherwise() {
        let rgb = [255, 255, 255, 255, 0, 0, 255, 255, 255];
        let (pal, idx) = quantize(&rgb);
        assert_eq!(pal, vec![[255, 255, 255], [255, 0, 0]]);
        assert_eq!(idx, vec![0, 1, 0]);
        // 300 distinct greys: the rare ones map to a nearby frequent one.
        let mut rgb = Vec::new();
        for g in 0..300u32 {
            let n = if g < 256 { 3 } else { 1 };
            for _ in 0..n {
                let v = (g * 255 / 299) as u8;
                rgb.extend_from_slice(&[v, v, g as u8]);
            }
        }
        let (pal, idx) = quantize(&rgb);
        assert_eq!(pal.len(), 256);
        for (p, &i) in rgb.chunks_exact(3).zip(&idx) {
            let q = pal[i as usize];
            let d: i32 = (0..3).map(|k| (p[k] as i32 - q[k] as i32).pow(2)).sum();
            assert!(d < 300 * 300, "{p:?} -> {q:?}");
        }
    }

    #[test]
    fn a_two_frame_gif_has_the_expected_structure() {
        let mut g = GifWriter::new(Vec::new(), 4, 2, 20).unwrap();
        g.add_frame(&[0u8; 24]).unwrap();
        g.add_frame(&[200u8; 24]).unwrap();
        assert!(g.add_frame(&[0u8; 5]).is_err());
        let bytes = g.finish().unwrap();
        assert_eq!(&bytes[..6], b"GIF89a");
        assert_eq!(*bytes.last().unwrap(), 0x3B);
        // Walk the blocks: two image descriptors, each decoding to its pixels.
        let sub_blocks = |mut i: usize, data: &mut Vec<u8>| -> usize {
            while bytes[i] != 0 {
                let n = bytes[i] as usize;
                data.extend_from_slice(&bytes[i + 1..i + 1 + n]);
                i += n + 1;
            }
            i + 1
        };
        let mut i = 13;
        let mut frames = Vec::new();
        while bytes[i] != 0x3B {
            match bytes[i] {
                0x21 => i = sub_blocks(i + 2, &mut Vec::new()),
                0x2C => {
                    assert_eq!(bytes[i + 9], 0x87);
                    let table = &bytes[i + 10..i + 10 + 768];
                    let mut data = Vec::new();
                    i = sub_blocks(i + 10 + 768 + 1, &mut data);
                    let idx = lzw_decode(&data, 8);
                    let px: Vec<u8> = idx
                        .iter()
                        .flat_map(|&k| table[3 * k as usize..3 * k as usize + 3].to_vec())
                        .collect();
                    frames.push(px);
                }
                b => panic!("unexpected block {b:#x}"),
            }
        }
        assert_eq!(frames, vec![vec![0u8; 24], vec![200u8; 24]]);
    }
}
