//! A structure-aware `.pth` generator: the fuzzer's bytes are read (with `arbitrary`) as a
//! stream of well-formed pickle opcodes — including whole `_rebuild_tensor_v2` calls with
//! arbitrary storage types, keys, offsets, sizes and strides, and globals a hostile file would
//! name — plus the raw storages beside it, and written as the Stored zip `torch.save` makes.
//! Random bytes rarely get past a pickle's first opcodes; these reach the allow-list, the
//! object building and the storage-view checks.

use std::io::{Cursor, Write};

use arbitrary::{Arbitrary, Unstructured};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// The strings the opcodes draw from (with [`STORAGE_TYPES`]): the names a checkpoint uses and
/// those an attack would.
const NAMES: &[&str] = &[
    "torch._utils",
    "_rebuild_tensor_v2",
    "_rebuild_parameter",
    "collections",
    "OrderedDict",
    "torch",
    "storage",
    "cpu",
    "cuda:0",
    "0",
    "1",
    "weight",
    "model",
    "state_dict",
    "os",
    "system",
    "posix",
    "builtins",
    "eval",
    "exec",
    "getattr",
    "__import__",
    "subprocess",
    "Popen",
    "numpy.core.multiarray",
    "_reconstruct",
    "__reduce__",
    "",
];

/// The storage classes `torch.save` names, and some it does not.
const STORAGE_TYPES: &[&str] = &[
    "FloatStorage",
    "BFloat16Storage",
    "HalfStorage",
    "LongStorage",
    "IntStorage",
    "ByteStorage",
    "BoolStorage",
    "DoubleStorage",
    "UntypedStorage",
    "ComplexFloatStorage",
    "Storage",
    "system",
];

fn name(i: u8) -> &'static str {
    let i = usize::from(i) % (NAMES.len() + STORAGE_TYPES.len());
    NAMES.get(i).unwrap_or_else(|| &STORAGE_TYPES[i - NAMES.len()])
}

/// One opcode with well-formed arguments, or a macro of several.
#[derive(Arbitrary, Debug)]
enum Op {
    Mark,
    EmptyDict,
    EmptyList,
    EmptyTuple,
    Tuple,
    Tuple1,
    Tuple2,
    Tuple3,
    Name(u8),
    Text(String),
    Int(i32),
    Int1(u8),
    Int2(u16),
    Long(i64),
    Float(f64),
    True,
    False,
    None,
    Put(u8),
    LongPut(u32),
    Memoize,
    Get(u8),
    LongGet(u32),
    Global(u8, u8),
    StackGlobal,
    Reduce,
    Build,
    PersId,
    SetItem,
    SetItems,
    Append,
    Appends,
    Frame(u64),
    Proto(u8),
    Stop,
    /// Any byte, for opcodes the unpickler does not know.
    Raw(u8),
    /// `name: _rebuild_tensor_v2(...)` as `torch.save` writes one entry of a state dict.
    Tensor(Tensor),
}

#[derive(Arbitrary, Debug)]
struct Tensor {
    name: u8,
    storage_type: u8,
    key: u8,
    numel: i64,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// A whole archive: a pickle of `ops` (inside a state dict's SETITEMS when `state_dict`) and
/// the storages `data/0`, `data/1`, … .
#[derive(Arbitrary, Debug)]
pub struct Archive {
    state_dict: bool,
    ops: Vec<Op>,
    storages: Vec<Vec<u8>>,
}

impl Archive {
    /// The archive the fuzzer's bytes describe.
    pub fn from_fuzz(data: &[u8]) -> Option<Archive> {
        Archive::arbitrary_take_rest(Unstructured::new(data)).ok()
    }

    /// The `.pth` file's bytes.
    pub fn to_pth(&self) -> Vec<u8> {
        let mut p = Pickle(vec![0x80, 2]);
        if self.state_dict {
            p.global("collections", "OrderedDict").op(b')').op(b'R').op(b'(');
        }
        for op in &self.ops {
            p.emit(op);
        }
        if self.state_dict {
            p.op(b'u');
        }
        p.op(b'.');
        let mut entries = vec![("archive/data.pkl".to_string(), p.0), ("archive/byteorder".into(), b"little".to_vec())];
        entries.extend(self.storages.iter().enumerate().map(|(i, s)| (format!("archive/data/{i}"), s.clone())));
        stored_zip(&entries)
    }
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn str(&mut self, s: &str) -> &mut Self {
        match u8::try_from(s.len()) {
            Ok(len) => self.op(0x8c).op(len).bytes(s.as_bytes()),
            Err(_) => self.op(b'X').bytes(&(s.len() as u32).to_le_bytes()).bytes(s.as_bytes()),
        }
    }

    fn int(&mut self, v: i64) -> &mut Self {
        match i32::try_from(v) {
            Ok(small) => self.op(b'J').bytes(&small.to_le_bytes()),
            Err(_) => self.op(0x8a).op(8).bytes(&v.to_le_bytes()),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b'c').bytes(format!("{module}\n{name}\n").as_bytes())
    }

    fn int_tuple(&mut self, values: &[i64]) -> &mut Self {
        self.op(b'(');
        for &v in values.iter().take(8) {
            self.int(v);
        }
        self.op(b't')
    }

    fn emit(&mut self, op: &Op) {
        match op {
            Op::Mark => self.op(b'('),
            Op::EmptyDict => self.op(b'}'),
            Op::EmptyList => self.op(b']'),
            Op::EmptyTuple => self.op(b')'),
            Op::Tuple => self.op(b't'),
            Op::Tuple1 => self.op(0x85),
            Op::Tuple2 => self.op(0x86),
            Op::Tuple3 => self.op(0x87),
            Op::Name(i) => self.str(name(*i)),
            Op::Text(s) => self.str(s),
            Op::Int(v) => self.op(b'J').bytes(&v.to_le_bytes()),
            Op::Int1(v) => self.op(b'K').op(*v),
            Op::Int2(v) => self.op(b'M').bytes(&v.to_le_bytes()),
            Op::Long(v) => self.op(0x8a).op(8).bytes(&v.to_le_bytes()),
            Op::Float(v) => self.op(b'G').bytes(&v.to_be_bytes()),
            Op::True => self.op(0x88),
            Op::False => self.op(0x89),
            Op::None => self.op(b'N'),
            Op::Put(i) => self.op(b'q').op(*i),
            Op::LongPut(i) => self.op(b'r').bytes(&i.to_le_bytes()),
            Op::Memoize => self.op(0x94),
            Op::Get(i) => self.op(b'h').op(*i),
            Op::LongGet(i) => self.op(b'j').bytes(&i.to_le_bytes()),
            Op::Global(m, n) => self.global(name(*m), name(*n)),
            Op::StackGlobal => self.op(0x93),
            Op::Reduce => self.op(b'R'),
            Op::Build => self.op(b'b'),
            Op::PersId => self.op(b'Q'),
            Op::SetItem => self.op(b's'),
            Op::SetItems => self.op(b'u'),
            Op::Append => self.op(b'a'),
            Op::Appends => self.op(b'e'),
            Op::Frame(len) => self.op(0x95).bytes(&len.to_le_bytes()),
            Op::Proto(v) => self.op(0x80).op(*v),
            Op::Stop => self.op(b'.'),
            Op::Raw(b) => self.op(*b),
            Op::Tensor(t) => {
                self.str(name(t.name)).global("torch._utils", "_rebuild_tensor_v2").op(b'(');
                let storage_type = STORAGE_TYPES[usize::from(t.storage_type) % STORAGE_TYPES.len()];
                // Keys mostly name a storage of the archive (`data/0` …), sometimes none.
                self.op(b'(').str("storage").global("torch", storage_type).str(&(t.key % 5).to_string()).str("cpu");
                self.int(t.numel).op(b't').op(b'Q');
                self.int(t.offset).int_tuple(&t.size).int_tuple(&t.stride);
                self.op(0x89).global("collections", "OrderedDict").op(b')').op(b'R').op(b't').op(b'R')
            }
        };
    }
}

/// A Stored zip archive of `entries`, as `torch.save` writes one.
fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(name.as_str(), options).expect("writing to memory");
        zip.write_all(data).expect("writing to memory");
    }
    zip.finish().expect("writing to memory").into_inner()
}
