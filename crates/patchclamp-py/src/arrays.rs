//! Tensors across the boundary: engine tensors out as numpy arrays, numpy arrays in as tensors.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use numpy::ndarray::{ArrayViewD, IxDyn, ShapeBuilder};
use numpy::{
    PyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors;

/// Keeps an engine tensor alive while numpy arrays view its memory.
#[pyclass(frozen, module = "patchclamp._native")]
pub struct TensorMemory {
    _tensor: Tensor,
}

/// A read-only float32 numpy array over `t`'s memory when it is an f32 CPU tensor — strided
/// views (a head's slice of a fused projection, a transpose) included, so no activation is
/// copied — else a float32 copy.
///
/// Read-only because the memory may be shared: a cached `hook_pos_embed` is a view of the
/// position-embedding weights, and the logits are also the cache's `logits`. The engine
/// never writes a tensor a forward pass has returned, so the view stays valid and unchanged
/// for as long as the array (which holds the tensor) lives. `.copy()` gives a writable array.
pub fn to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let dims = t.dims().to_vec();
    let view = {
        let (storage, layout) = t.storage_and_layout();
        match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                let (start, stride) = (layout.start_offset(), layout.stride().to_vec());
                // The furthest element the view reaches must lie inside the storage.
                let last = start
                    + dims
                        .iter()
                        .zip(&stride)
                        .map(|(&d, &s)| d.saturating_sub(1) * s)
                        .sum::<usize>();
                let empty = dims.contains(&0);
                (empty || last < v.len()).then(|| (v[start.min(v.len())..].as_ptr(), stride))
            }
            _ => None,
        }
    };
    let arr = match view {
        Some((ptr, stride)) => {
            let holder = Bound::new(py, TensorMemory { _tensor: t.clone() })?.into_any();
            // SAFETY: every element the shape and strides reach lies inside the tensor's
            // storage (checked above), which `holder` keeps alive and which nothing writes.
            unsafe {
                let view = ArrayViewD::from_shape_ptr(IxDyn(&dims).strides(IxDyn(&stride)), ptr);
                PyArray::borrow_from_array(&view, holder)
            }
        }
        None => {
            let flat: Vec<f32> = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(errors::candle)?;
            PyArray1::from_vec(py, flat).reshape(dims)?
        }
    };
    let kw = PyDict::new(py);
    kw.set_item("write", false)?;
    arr.call_method("setflags", (), Some(&kw))?;
    Ok(arr)
}

/// A writable float32 copy of `t` (what a hook function gets: it may edit it in place).
pub fn to_numpy_copy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let flat: Vec<f32> = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(errors::candle)?;
    PyArray1::from_vec(py, flat).reshape(t.dims().to_vec())
}

/// A tensor holding a (contiguous, float32) numpy array.
pub fn from_numpy(a: &PyReadonlyArrayDyn<'_, f32>, dev: &Device) -> PyResult<Tensor> {
    let shape = a.shape().to_vec();
    let data = a
        .as_slice()
        .map_err(|_| PyValueError::new_err("the array must be C-contiguous"))?;
    Tensor::from_slice(data, shape, dev).map_err(errors::candle)
}
