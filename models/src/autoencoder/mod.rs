//! The convolutional autoencoder both tokenizers are built on (the taming-transformers / LDM
//! family): GroupNorm + SiLU ResBlocks per resolution level, stride-2 convolutions down,
//! nearest ×2 + convolution up, and — in VAR's VQVAE, not in Infinity's BitVAE — single-head
//! attention blocks at the lowest resolution and in the middle. [`NetShape`] says which
//! layers exist and what their state-dict entries are; `net` runs them.

mod net;

pub(crate) use net::Conv;
pub use net::{Decoder, Encoder};

/// How a checkpoint names a convolution's and a norm's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStyle {
    /// `x.conv.weight`, `x.norm.bias` (the BitVAE's modules wrap theirs).
    Wrapped,
    /// `x.weight`, `x.bias` (VAR's VQVAE).
    Flat,
}

impl KeyStyle {
    /// The key of parameter `param` (`weight` or `bias`) of the convolution `name`.
    pub fn conv(self, name: &str, param: &str) -> String {
        match self {
            KeyStyle::Wrapped => format!("{name}.conv.{param}"),
            KeyStyle::Flat => format!("{name}.{param}"),
        }
    }

    /// The key of parameter `param` of the GroupNorm `name`.
    pub fn norm(self, name: &str, param: &str) -> String {
        match self {
            KeyStyle::Wrapped => format!("{name}.norm.{param}"),
            KeyStyle::Flat => format!("{name}.{param}"),
        }
    }
}

/// The layers of an encoder/decoder pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetShape {
    /// Channels of the first level.
    pub base_ch: usize,
    /// Channel multiplier per level (encoder and decoder use the same list).
    pub ch_mult: Vec<usize>,
    /// ResBlocks per encoder level; decoder levels have one more.
    pub num_res_blocks: usize,
    /// Channels of the latent.
    pub z_channels: usize,
    /// Stride-2 stages (the first levels downsample, the matching decoder levels upsample).
    pub downsamples: usize,
    /// Attention after every ResBlock of the lowest-resolution level and between the two
    /// middle ResBlocks.
    pub attention: bool,
    pub keys: KeyStyle,
}

/// One state-dict entry implied by a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub shape: Vec<usize>,
    /// Buffers (a quantizer's bit mask, usage statistics, masks) are stored but carry no
    /// weights the forward uses.
    pub buffer: bool,
}

impl NetShape {
    pub fn num_levels(&self) -> usize {
        self.ch_mult.len()
    }

    /// Channels of the lowest-resolution level (and the middle).
    pub fn top_channels(&self) -> usize {
        self.base_ch * self.ch_mult[self.num_levels() - 1]
    }

    /// Channels (in, out) of every ResBlock of encoder level `l`.
    pub fn encoder_blocks(&self, l: usize) -> Vec<(usize, usize)> {
        let cin = if l == 0 { self.base_ch } else { self.base_ch * self.ch_mult[l - 1] };
        let cout = self.base_ch * self.ch_mult[l];
        (0..self.num_res_blocks).map(|b| (if b == 0 { cin } else { cout }, cout)).collect()
    }

    /// Channels (in, out) of every ResBlock of decoder level `l` (levels run top-down).
    pub fn decoder_blocks(&self, l: usize) -> Vec<(usize, usize)> {
        let top = self.num_levels() - 1;
        let cin = if l == top { self.top_channels() } else { self.base_ch * self.ch_mult[l + 1] };
        let cout = self.base_ch * self.ch_mult[l];
        (0..=self.num_res_blocks).map(|b| (if b == 0 { cin } else { cout }, cout)).collect()
    }

    pub fn encoder_downsamples(&self, l: usize) -> bool {
        l < self.downsamples
    }

    pub fn decoder_upsamples(&self, l: usize) -> bool {
        (1..=self.downsamples).contains(&l)
    }

    /// Whether the ResBlocks of level `l` are each followed by an attention block.
    pub fn level_attends(&self, l: usize) -> bool {
        self.attention && l + 1 == self.num_levels()
    }

    /// Every state-dict entry of the encoder and the decoder, in module order.
    pub fn entries(&self) -> Vec<Entry> {
        let mut e = EntryList { entries: Vec::new(), keys: self.keys };
        let top = self.top_channels();

        e.conv("encoder.conv_in", self.base_ch, 3, 3);
        for l in 0..self.num_levels() {
            let blocks = self.encoder_blocks(l);
            for (b, &(cin, cout)) in blocks.iter().enumerate() {
                e.resblock(&format!("encoder.down.{l}.block.{b}"), cin, cout);
            }
            if self.level_attends(l) {
                (0..blocks.len()).for_each(|b| e.attention(&format!("encoder.down.{l}.attn.{b}"), top));
            }
            if self.encoder_downsamples(l) {
                let c = blocks[blocks.len() - 1].1;
                e.conv(&format!("encoder.down.{l}.downsample.conv"), c, c, 3);
            }
        }
        self.mid_entries(&mut e, "encoder");
        e.norm("encoder.norm_out", top);
        e.conv("encoder.conv_out", self.z_channels, top, 3);

        e.conv("decoder.conv_in", top, self.z_channels, 3);
        self.mid_entries(&mut e, "decoder");
        // The decoder runs its levels top-down but stores them by index, as `nn.ModuleList`s do.
        for l in 0..self.num_levels() {
            let blocks = self.decoder_blocks(l);
            for (b, &(cin, cout)) in blocks.iter().enumerate() {
                e.resblock(&format!("decoder.up.{l}.block.{b}"), cin, cout);
            }
            if self.level_attends(l) {
                (0..blocks.len()).for_each(|b| e.attention(&format!("decoder.up.{l}.attn.{b}"), top));
            }
            if self.decoder_upsamples(l) {
                let c = blocks[blocks.len() - 1].1;
                e.conv(&format!("decoder.up.{l}.upsample.conv"), c, c, 3);
            }
        }
        let bottom = self.base_ch * self.ch_mult[0];
        e.norm("decoder.norm_out", bottom);
        e.conv("decoder.conv_out", 3, bottom, 3);
        e.entries
    }

    fn mid_entries(&self, e: &mut EntryList, part: &str) {
        let top = self.top_channels();
        e.resblock(&format!("{part}.mid.block_1"), top, top);
        if self.attention {
            e.attention(&format!("{part}.mid.attn_1"), top);
        }
        e.resblock(&format!("{part}.mid.block_2"), top, top);
    }
}

/// Collects entries in module order, one helper per layer kind.
pub(crate) struct EntryList {
    pub(crate) entries: Vec<Entry>,
    keys: KeyStyle,
}

impl EntryList {
    pub(crate) fn new(keys: KeyStyle) -> Self {
        EntryList { entries: Vec::new(), keys }
    }

    pub(crate) fn param(&mut self, key: String, shape: Vec<usize>) {
        self.entries.push(Entry { key, shape, buffer: false });
    }

    pub(crate) fn buffer(&mut self, key: String, shape: Vec<usize>) {
        self.entries.push(Entry { key, shape, buffer: true });
    }

    pub(crate) fn conv(&mut self, name: &str, cout: usize, cin: usize, k: usize) {
        self.param(self.keys.conv(name, "weight"), vec![cout, cin, k, k]);
        self.param(self.keys.conv(name, "bias"), vec![cout]);
    }

    fn norm(&mut self, name: &str, c: usize) {
        self.param(self.keys.norm(name, "weight"), vec![c]);
        self.param(self.keys.norm(name, "bias"), vec![c]);
    }

    fn resblock(&mut self, name: &str, cin: usize, cout: usize) {
        self.norm(&format!("{name}.norm1"), cin);
        self.conv(&format!("{name}.conv1"), cout, cin, 3);
        self.norm(&format!("{name}.norm2"), cout);
        self.conv(&format!("{name}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{name}.nin_shortcut"), cout, cin, 1);
        }
    }

    fn attention(&mut self, name: &str, c: usize) {
        self.norm(&format!("{name}.norm"), c);
        self.conv(&format!("{name}.qkv"), 3 * c, c, 1);
        self.conv(&format!("{name}.proj_out"), c, c, 1);
    }
}
