//! A restricted unpickler for the `data.pkl` of `torch.save` checkpoints. It builds a plain
//! value tree and knows only the few globals a state dict needs (`OrderedDict`,
//! `_rebuild_tensor_v2`, the typed storages); any other global is refused by name, so
//! loading a checkpoint never runs code. Storages and tensors stay descriptions here
//! (key, dtype, shape, strides); `pth` maps their bytes.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::rc::Rc;

use crate::{DType, Error, Result};

/// Bounds that keep a hostile pickle from exhausting memory; real checkpoints stay far below
/// (a 2B state dict uses a few thousand memo entries and a stack of a few thousand values).
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 22;

/// The storage classes `torch.save` names in persistent ids, and their element types.
const STORAGE_TYPES: [(&str, DType); 6] = [
    ("FloatStorage", DType::F32),
    ("BFloat16Storage", DType::BF16),
    ("HalfStorage", DType::F16),
    ("LongStorage", DType::I64),
    ("IntStorage", DType::I32),
    ("ByteStorage", DType::U8),
];

/// Index of a container in `Pickle::objects`.
pub(crate) type ObjId = usize;

/// A pickled value. Containers live in an arena so that memo references share them (as
/// Python objects do) and a walk can recognise one it has already seen.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Obj(ObjId),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

#[derive(Debug)]
pub(crate) enum Object {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Items in insertion order, which is the state dict's order.
    Dict(Vec<(Value, Value)>),
}

/// The only callables a checkpoint may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    /// `torch.<name>`, one of `STORAGE_TYPES`.
    Storage {
        name: &'static str,
        dtype: DType,
    },
}

/// A storage referenced by persistent id: its bytes are the archive entry `data/<key>`.
#[derive(Debug)]
pub(crate) struct StorageRef {
    pub dtype: DType,
    pub key: String,
    pub numel: usize,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: a strided view of a storage.
#[derive(Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The unpickled tree: `root` and the containers it refers to.
pub(crate) struct Pickle {
    pub root: Value,
    objects: Vec<Object>,
}

impl Pickle {
    pub fn object(&self, id: ObjId) -> &Object {
        &self.objects[id]
    }
}

/// Unpickles `data` (the `data.pkl` of the checkpoint at `path`, named in errors).
pub(crate) fn load(path: &Path, data: &[u8]) -> Result<Pickle> {
    Unpickler { path, data, pos: 0, op_pos: 0, stack: vec![], marks: vec![], memo: HashMap::new(), objects: vec![] }
        .run()
}

/// The opcodes understood, named as in CPython's `pickle` module; any other is an error.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const NONE: u8 = b'N';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
}

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    /// Where the opcode being executed starts, for error messages.
    op_pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
}

impl Unpickler<'_> {
    fn run(mut self) -> Result<Pickle> {
        loop {
            self.op_pos = self.pos;
            match self.byte()? {
                op::PROTO => {
                    let version = self.byte()?;
                    if version > 5 {
                        return Err(self.error(format!("unknown pickle protocol {version}")));
                    }
                }
                // Protocol 4 framing only groups opcodes for buffered reads; the data is all here.
                op::FRAME => {
                    self.take(8)?;
                }
                op::STOP => {
                    let root = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.error("values left on the stack at STOP".into()));
                    }
                    return Ok(Pickle { root, objects: self.objects });
                }
                op::MARK => {
                    self.check_room()?;
                    self.marks.push(self.stack.len());
                }
                op::EMPTY_DICT => self.push_object(Object::Dict(vec![]))?,
                op::EMPTY_LIST => self.push_object(Object::List(vec![]))?,
                op::EMPTY_TUPLE => self.push_object(Object::Tuple(vec![]))?,
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_object(Object::Tuple(items))?;
                }
                op::TUPLE1 => self.push_tuple(1)?,
                op::TUPLE2 => self.push_tuple(2)?,
                op::TUPLE3 => self.push_tuple(3)?,
                op::BINUNICODE => {
                    let len = self.u32()? as usize;
                    self.push_str(len)?;
                }
                op::SHORT_BINUNICODE => {
                    let len = self.byte()? as usize;
                    self.push_str(len)?;
                }
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                op::BININT1 => {
                    let v = self.byte()?;
                    self.push(Value::Int(v.into()))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                op::LONG1 => {
                    let v = self.long1()?;
                    self.push(Value::Int(v))?;
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::NONE => self.push(Value::None)?,
                op::BINPUT => {
                    let index = self.byte()?;
                    self.memo_put(index.into())?;
                }
                op::LONG_BINPUT => {
                    let index = self.u32()?;
                    self.memo_put(index)?;
                }
                op::MEMOIZE => {
                    let index = u32::try_from(self.memo.len()).map_err(|_| self.error("memo overflow".into()))?;
                    self.memo_put(index)?;
                }
                op::BINGET => {
                    let index = self.byte()?;
                    self.memo_get(index.into())?;
                }
                op::LONG_BINGET => {
                    let index = self.u32()?;
                    self.memo_get(index)?;
                }
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = self.resolve(&module, &name)?;
                    self.push(Value::Global(global))?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop_str()?;
                    let module = self.pop_str()?;
                    let global = self.resolve(&module, &name)?;
                    self.push(Value::Global(global))?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = self.reduce(callable, args)?;
                    self.push(value)?;
                }
                op::BUILD => self.build()?,
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let storage = self.persistent_storage(pid)?;
                    self.push(storage)?;
                }
                op::SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.dict_on_top()?.push((key, value));
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.error("SETITEMS with an odd number of values".into()));
                    }
                    let mut items = items.into_iter();
                    let pairs: Vec<(Value, Value)> =
                        std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect();
                    self.dict_on_top()?.extend(pairs);
                }
                op::APPEND => {
                    let value = self.pop()?;
                    self.list_on_top()?.push(value);
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.list_on_top()?.extend(items);
                }
                other => return Err(self.error(format!("unsupported opcode 0x{other:02x}"))),
            }
        }
    }

    fn error(&self, msg: String) -> Error {
        error_at(self.path, self.op_pos, msg)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        let Some(end) = end else {
            return Err(self.error(format!("truncated: {n} bytes needed, {} left", self.data.len() - self.pos)));
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian two's-complement integer of up to 8 bytes (wider ones have no use in
    /// a checkpoint).
    fn long1(&mut self) -> Result<i64> {
        let len = self.byte()? as usize;
        if len > 8 {
            return Err(self.error(format!("{len}-byte integer does not fit in 64 bits")));
        }
        let bytes = self.take(len)?;
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let mut full = [if negative { 0xff } else { 0 }; 8];
        full[..len].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(full))
    }

    /// A newline-terminated ASCII line (the module and name of GLOBAL).
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.error("truncated GLOBAL name".into()));
        };
        let line = self.take(len + 1)?;
        match std::str::from_utf8(&line[..len]) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.error("GLOBAL name is not UTF-8".into())),
        }
    }

    fn push_str(&mut self, len: usize) -> Result<()> {
        let bytes = self.take(len)?;
        let s: Rc<str> = match std::str::from_utf8(bytes) {
            Ok(s) => s.into(),
            Err(_) => return Err(self.error("string is not UTF-8".into())),
        };
        self.push(Value::Str(s))
    }

    fn check_room(&self) -> Result<()> {
        if self.stack.len() + self.marks.len() >= MAX_STACK {
            return Err(self.error(format!("more than {MAX_STACK} values and marks on the stack")));
        }
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<()> {
        self.check_room()?;
        self.stack.push(value);
        Ok(())
    }

    fn push_object(&mut self, object: Object) -> Result<()> {
        self.objects.push(object);
        self.push(Value::Obj(self.objects.len() - 1))
    }

    /// The stack length at the innermost MARK: values below it belong to an enclosing construct.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push_tuple(&mut self, n: usize) -> Result<()> {
        if self.stack.len() < self.floor() + n {
            return Err(self.error(format!("stack underflow building a {n}-tuple")));
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.push_object(Object::Tuple(items))
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() > self.floor()
            && let Some(value) = self.stack.pop()
        {
            return Ok(value);
        }
        Err(self.error("stack underflow".into()))
    }

    /// Pops the values above the innermost MARK, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.error("no MARK to pop to".into()));
        };
        Ok(self.stack.split_off(mark))
    }

    fn pop_str(&mut self) -> Result<Rc<str>> {
        match self.pop()? {
            Value::Str(s) => Ok(s),
            other => Err(self.error(format!("expected a string, got {other}"))),
        }
    }

    fn top(&self) -> Result<&Value> {
        match self.stack.last() {
            Some(v) if self.stack.len() > self.floor() => Ok(v),
            _ => Err(self.error("stack underflow".into())),
        }
    }

    /// The container on top of the stack: the target of SETITEM(S), APPEND(S) and BUILD.
    fn object_on_top(&self) -> Result<ObjId> {
        match self.top()? {
            &Value::Obj(id) => Ok(id),
            other => Err(self.error(format!("expected a dict or list, got {other}"))),
        }
    }

    fn dict_on_top(&mut self) -> Result<&mut Vec<(Value, Value)>> {
        let id = self.object_on_top()?;
        match &mut self.objects[id] {
            Object::Dict(items) => Ok(items),
            _ => Err(error_at(self.path, self.op_pos, "SETITEM(S) on something that is not a dict".into())),
        }
    }

    fn list_on_top(&mut self) -> Result<&mut Vec<Value>> {
        let id = self.object_on_top()?;
        match &mut self.objects[id] {
            Object::List(items) => Ok(items),
            _ => Err(error_at(self.path, self.op_pos, "APPEND(S) on something that is not a list".into())),
        }
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        let value = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(self.error(format!("more than {MAX_MEMO} memo entries")));
        }
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<()> {
        match self.memo.get(&index) {
            Some(value) => {
                let value = value.clone();
                self.push(value)
            }
            None => Err(self.error(format!("memo entry {index} was never stored"))),
        }
    }

    fn resolve(&self, module: &str, name: &str) -> Result<Global> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
            ("torch", storage) if storage.ends_with("Storage") => {
                match STORAGE_TYPES.iter().find(|(n, _)| *n == storage) {
                    Some(&(name, dtype)) => Ok(Global::Storage { name, dtype }),
                    None => Err(self.error(format!("unsupported storage type torch.{}", storage.escape_debug()))),
                }
            }
            _ => Err(self.error(format!(
                "refusing to load global {}.{}: a checkpoint may only hold tensors, dicts, lists and plain values",
                module.escape_debug(),
                name.escape_debug()
            ))),
        }
    }

    /// Calls one of the allowed globals.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(global) = callable else {
            return Err(self.error(format!("REDUCE calls {callable}, which is not a callable")));
        };
        let Some(args) = self.tuple_items(&args) else {
            return Err(self.error(format!("the arguments of {global} are {args}, not a tuple")));
        };
        match global {
            Global::RebuildTensorV2 => self.rebuild_tensor(args),
            Global::OrderedDict if args.is_empty() => {
                self.objects.push(Object::Dict(vec![]));
                Ok(Value::Obj(self.objects.len() - 1))
            }
            _ => Err(self.error(format!("{global} called with unsupported arguments"))),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    /// The last arguments concern autograd and are irrelevant to stored weights.
    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value> {
        let [Value::Storage(storage), offset, size, stride, ..] = args else {
            return Err(self.error("_rebuild_tensor_v2 needs a storage, an offset, a size and a stride".into()));
        };
        if !(6..=7).contains(&args.len()) {
            return Err(self.error(format!("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", args.len())));
        }
        let offset = self.usize_of(offset, "storage offset")?;
        let size = self.usize_tuple(size, "size")?;
        let stride = self.usize_tuple(stride, "stride")?;
        if size.len() != stride.len() {
            return Err(self.error(format!("size {size:?} and stride {stride:?} differ in rank")));
        }
        Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), offset, size, stride })))
    }

    /// `('storage', torch.XStorage, key, location, numel)`; the location (cpu, cuda:0, ...) is
    /// irrelevant since every storage is read from the file.
    fn persistent_storage(&self, pid: Value) -> Result<Value> {
        let items = self.tuple_items(&pid).unwrap_or_default();
        let [Value::Str(kind), class, Value::Str(key), Value::Str(_location), numel] = items else {
            return Err(self.error("persistent id is not ('storage', type, key, location, numel)".into()));
        };
        if &**kind != "storage" {
            return Err(self.error(format!("persistent id of unknown kind {kind:?}")));
        }
        let &Value::Global(Global::Storage { dtype, .. }) = class else {
            return Err(self.error(format!("persistent id names {class}, not a known storage type")));
        };
        let numel = self.usize_of(numel, "storage size")?;
        Ok(Value::Storage(Rc::new(StorageRef { dtype, key: key.to_string(), numel })))
    }

    fn usize_of(&self, value: &Value, what: &str) -> Result<usize> {
        match value {
            &Value::Int(i) => usize::try_from(i).map_err(|_| self.error(format!("{what} {i} is negative"))),
            other => Err(self.error(format!("{what} is {other}, not an integer"))),
        }
    }

    fn usize_tuple(&self, value: &Value, what: &str) -> Result<Vec<usize>> {
        match self.tuple_items(value) {
            Some(items) => items.iter().map(|v| self.usize_of(v, what)).collect(),
            None => Err(self.error(format!("{what} is {value}, not a tuple"))),
        }
    }

    fn tuple_items(&self, value: &Value) -> Option<&[Value]> {
        match value {
            &Value::Obj(id) => match &self.objects[id] {
                Object::Tuple(items) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    /// BUILD sets an object's state. `torch.save` emits it only for an `OrderedDict` state dict,
    /// whose state is the `_metadata` version table; it carries no weights and is dropped.
    /// BUILD sets an object's state (`__setstate__`, code of the object's class): accepted on a
    /// dict only, where the state is ignored, as a plain dict has none.
    fn build(&mut self) -> Result<()> {
        let state = self.pop()?;
        let is_dict = matches!(self.top()?, &Value::Obj(id) if matches!(self.objects[id], Object::Dict(_)));
        if is_dict {
            return Ok(());
        }
        Err(self.error(format!("BUILD with state {state} on {}, which is not a dict", self.top()?)))
    }
}

fn error_at(path: &Path, op_pos: usize, msg: String) -> Error {
    Error::format(path, format!("data.pkl, byte {op_pos}: {msg}"))
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Global::OrderedDict => f.write_str("collections.OrderedDict"),
            Global::RebuildTensorV2 => f.write_str("torch._utils._rebuild_tensor_v2"),
            Global::Storage { name, .. } => write!(f, "torch.{name}"),
        }
    }
}

/// Short descriptions for error messages.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) if s.chars().count() > 40 => write!(f, "{:?}...", s.chars().take(40).collect::<String>()),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Obj(_) => f.write_str("a container"),
            Value::Global(g) => write!(f, "{g}"),
            Value::Storage(s) => write!(f, "storage '{}'", s.key),
            Value::Tensor(_) => f.write_str("a tensor"),
        }
    }
}
