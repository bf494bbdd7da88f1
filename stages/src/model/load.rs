//! Hugging Face safetensors in and out: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, in f32, bf16 or f16 (converted to the dtype asked for).
//!
//! Reading parses each file's JSON header and then reads one tensor at a time at its offset, so
//! the peak extra memory is one tensor, not one file: a 4B model's 8 GB checkpoint loads onto a
//! GPU without 8 GB of host buffers, and without `unsafe` memory maps. Every offset and size is
//! checked against the header and the file length before anything is read. Writing goes through
//! the `safetensors` crate (sorted, deterministic bytes; `{"format": "pt"}` metadata, which
//! transformers expects), one tensor materialized at a time.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, View};
use serde::Deserialize;
use serde_json::Value;

use super::ModelError;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const CONFIG_FILE: &str = "config.json";

/// A safetensors header is at most this long (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute).
    pub start: u64,
    pub end: u64,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn st_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Safetensors {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// The tensors of one safetensors file, by name, checked against the file's length.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorEntry>, ModelError> {
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| ModelError::io(path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        return Err(st_error(
            path,
            format!("header length {header_len} does not fit a {file_len}-byte file"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| ModelError::io(path, e))?;
    let raw: BTreeMap<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| st_error(path, format!("header is not JSON: {e}")))?;
    let data_start = 8 + header_len;
    let mut entries = BTreeMap::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let entry: RawEntry = serde_json::from_value(value)
            .map_err(|e| st_error(path, format!("tensor `{name}`: {e}")))?;
        let dtype = dtype_of(&entry.dtype).ok_or_else(|| {
            st_error(
                path,
                format!("tensor `{name}`: dtype {} is not supported", entry.dtype),
            )
        })?;
        let [start, end] = entry.data_offsets;
        let numel: u64 = entry.shape.iter().map(|&d| d as u64).product();
        if end < start
            || end - start != numel * dtype.size_in_bytes() as u64
            || data_start + end > file_len
        {
            return Err(st_error(
                path,
                format!(
                    "tensor `{name}`: offsets {start}..{end} do not hold {:?} {:?} within the file",
                    entry.dtype, entry.shape
                ),
            ));
        }
        entries.insert(
            name,
            TensorEntry {
                dtype,
                shape: entry.shape,
                start: data_start + start,
                end: data_start + end,
            },
        );
    }
    Ok(entries)
}

/// Reads the tensors of one file onto `device`; float tensors are converted to `dtype` when one
/// is given, integer tensors keep theirs.
pub fn load_file(
    path: &Path,
    dtype: Option<DType>,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let entries = read_header(path)?;
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = HashMap::with_capacity(entries.len());
    let mut buf = Vec::new();
    for (name, entry) in entries {
        buf.resize((entry.end - entry.start) as usize, 0);
        file.seek(SeekFrom::Start(entry.start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| ModelError::io(path, e))?;
        let tensor = Tensor::from_raw_buffer(&buf, entry.dtype, &entry.shape, device)?;
        let tensor = match dtype {
            Some(d) if entry.dtype.is_float() && entry.dtype != d => tensor.to_dtype(d)?,
            _ => tensor,
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The weight files of a model directory: the shards named by `model.safetensors.index.json`, or
/// `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let parsed: Index = serde_json::from_str(&text)
            .map_err(|e| st_error(&index, format!("not a safetensors index: {e}")))?;
        let mut files: Vec<String> = parsed.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        for f in &files {
            if Path::new(f).components().count() != 1 {
                return Err(st_error(
                    &index,
                    format!("shard `{f}` is not a plain file name"),
                ));
            }
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("neither {SINGLE_FILE} nor {INDEX_FILE} in the model directory"),
        ),
    ))
}

/// Every tensor of a model directory (single file or shards), float tensors in `dtype`.
pub fn load_dir(
    dir: &Path,
    dtype: Option<DType>,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut all = HashMap::new();
    for file in weight_files(dir)? {
        for (name, tensor) in load_file(&file, dtype, device)? {
            if all.insert(name.clone(), tensor).is_some() {
                return Err(st_error(&file, format!("tensor `{name}` is in two shards")));
            }
        }
    }
    Ok(all)
}

/// A tensor to write: its bytes are produced only when the writer reaches it.
pub struct LazyTensor<'a> {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Box<dyn Fn() -> Result<Vec<u8>, ModelError> + 'a>,
    /// Where a failure of `bytes` waits for [`save_file`]: the writer's `View::data` cannot fail.
    error: RefCell<Option<ModelError>>,
}

impl<'a> LazyTensor<'a> {
    /// A tensor of `dtype` and `shape` whose little-endian bytes `bytes` makes on demand.
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        bytes: impl Fn() -> Result<Vec<u8>, ModelError> + 'a,
    ) -> LazyTensor<'a> {
        LazyTensor {
            dtype,
            shape,
            bytes: Box::new(bytes),
            error: RefCell::new(None),
        }
    }

    /// The size of the tensor's bytes.
    pub fn len_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

impl View for &LazyTensor<'_> {
    fn dtype(&self) -> StDtype {
        self.dtype.into()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match (self.bytes)() {
            Ok(bytes) if bytes.len() == self.data_len() => Cow::Owned(bytes),
            Ok(bytes) => {
                *self.error.borrow_mut() = Some(ModelError::Invalid(format!(
                    "a tensor of shape {:?} produced {} bytes, not {}",
                    self.shape,
                    bytes.len(),
                    self.data_len()
                )));
                Cow::Owned(vec![0; self.data_len()])
            }
            Err(e) => {
                *self.error.borrow_mut() = Some(e);
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.len_bytes()
    }
}

/// The raw little-endian bytes of a tensor (copied to the host).
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>, ModelError> {
    let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
    Ok(match t.dtype() {
        DType::F32 => bytes_of(&flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => bytes_of(&flat.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::BF16 => bytes_of(&flat.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        DType::F16 => bytes_of(&flat.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::U32 => bytes_of(&flat.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::I64 => bytes_of(&flat.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::U8 => flat.to_vec1::<u8>()?,
        other => {
            return Err(ModelError::Invalid(format!(
                "cannot save a tensor of dtype {other:?}"
            )));
        }
    })
}

fn bytes_of<T: Copy, const N: usize>(v: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * N);
    for &x in v {
        out.extend_from_slice(&f(x));
    }
    out
}

/// Writes `tensors` into one safetensors file (atomically: a temporary file renamed; removed
/// again if a tensor failed to produce its bytes).
pub fn save_file<'a>(
    path: &Path,
    tensors: Vec<(String, LazyTensor<'a>)>,
) -> Result<(), ModelError> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let views = tensors.iter().map(|(n, t)| (n.as_str(), t));
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => ModelError::io(path, io),
        other => st_error(path, other.to_string()),
    })?;
    if let Some(e) = tensors
        .iter()
        .find_map(|(_, t)| t.error.borrow_mut().take())
    {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// A tensor already in memory, as a [`LazyTensor`] (converted to `dtype` when it is written).
pub fn lazy(t: &Tensor, dtype: DType) -> LazyTensor<'_> {
    LazyTensor::new(dtype, t.dims().to_vec(), move || {
        tensor_bytes(&t.to_dtype(dtype)?)
    })
}

/// Writes a model's weights into `dir` the way transformers does: `model.safetensors` when they
/// fit in `max_shard_bytes`, else `model-0000i-of-0000n.safetensors` shards plus
/// `model.safetensors.index.json`. Returns the files written.
pub fn save_weights<'a>(
    dir: &Path,
    tensors: Vec<(String, LazyTensor<'a>)>,
    max_shard_bytes: u64,
) -> Result<Vec<PathBuf>, ModelError> {
    let mut shards: Vec<Vec<(String, LazyTensor<'a>)>> = vec![Vec::new()];
    let mut shard_bytes = 0u64;
    let total: u64 = tensors.iter().map(|(_, t)| t.len_bytes() as u64).sum();
    let mut sorted = tensors;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in sorted {
        let n = t.len_bytes() as u64;
        if shard_bytes > 0 && shard_bytes + n > max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += n;
        shards
            .last_mut()
            .expect("one shard at least")
            .push((name, t));
    }
    if shards.len() == 1 {
        let path = dir.join(SINGLE_FILE);
        save_file(&path, shards.pop().expect("one shard"))?;
        return Ok(vec![path]);
    }
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut written = Vec::with_capacity(count + 1);
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), file.clone());
        }
        let path = dir.join(&file);
        save_file(&path, shard)?;
        written.push(path);
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let path = dir.join(INDEX_FILE);
    write_text(&path, &serde_json::to_string_pretty(&index).expect("JSON"))?;
    written.push(path);
    Ok(written)
}

/// Writes `text` (plus a final newline) to `path`.
pub fn write_text(path: &Path, text: &str) -> Result<(), ModelError> {
    let mut f = File::create(path).map_err(|e| ModelError::io(path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .map_err(|e| ModelError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors() -> Vec<(String, Tensor)> {
        let dev = Device::Cpu;
        vec![
            (
                "a.weight".into(),
                Tensor::new(&[[1.5f32, -2.0], [0.25, 3.0]], &dev).unwrap(),
            ),
            (
                "b.weight".into(),
                Tensor::new(&[1f32, 2., 3., 4., 5.], &dev).unwrap(),
            ),
            ("c.ids".into(), Tensor::new(&[7i64, 8], &dev).unwrap()),
        ]
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn single_and_sharded_round_trip_in_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        for (max_shard, dtype) in [(u64::MAX, DType::F32), (16, DType::BF16), (16, DType::F16)] {
            let sub = dir.path().join(format!("{max_shard}-{dtype:?}"));
            std::fs::create_dir(&sub).unwrap();
            let ts: Vec<(String, Tensor)> = tensors()
                .into_iter()
                .map(|(n, t)| {
                    let t = if t.dtype().is_float() {
                        t.to_dtype(dtype).unwrap()
                    } else {
                        t
                    };
                    (n, t)
                })
                .collect();
            let files = save_weights(
                &sub,
                ts.iter()
                    .map(|(n, t)| (n.clone(), lazy(t, t.dtype())))
                    .collect(),
                max_shard,
            )
            .unwrap();
            assert_eq!(files.len(), if max_shard == u64::MAX { 1 } else { 4 });
            // Loaded back as f32, the values are the saved ones (all exact in bf16 and f16).
            let back = load_dir(&sub, Some(DType::F32), &Device::Cpu).unwrap();
            assert_eq!(back.len(), 3);
            for (name, t) in tensors() {
                let got = &back[&name];
                assert_eq!(got.dims(), t.dims(), "{name}");
                let want_dtype = if t.dtype().is_float() {
                    DType::F32
                } else {
                    DType::I64
                };
                assert_eq!(got.dtype(), want_dtype, "{name}");
                assert_eq!(values(got), values(&t), "{name}");
            }
        }
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ts = tensors();
        save_weights(
            dir.path(),
            ts.iter()
                .map(|(n, t)| (n.clone(), lazy(t, t.dtype())))
                .collect(),
            u64::MAX,
        )
        .unwrap();
        let path = dir.path().join(SINGLE_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = load_dir(dir.path(), None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("offsets"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let err = load_dir(dir.path(), None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither"), "{err}");
    }
}
