// The only file that includes pybind11: it exposes the device runtime to
// Python as edgerun._core and turns Status values into Python exceptions.
// Each area keeps its own section below; add to your section only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "edgerun/status.h"

namespace py = pybind11;

namespace {

// Raised in Python as edgerun._core.CoreError(code, message); edgerun.errors
// maps the code groups onto the public error hierarchy.
py::object g_core_error;

[[noreturn]] void throw_status(const edgerun::Status& st) {
  py::object exc = g_core_error(static_cast<uint32_t>(st.code()), st.message());
  PyErr_SetObject(g_core_error.ptr(), exc.ptr());
  throw py::error_already_set();
}

#define THROW_IF_ERROR(expr)                      \
  do {                                            \
    ::edgerun::Status _st = (expr);               \
    if (!_st.ok()) throw_status(_st);             \
  } while (0)

// ==== wire: begin ====
void bind_wire(py::module_& m) {}
// ==== wire: end ====

// ==== engine: begin ====
void bind_engine(py::module_& m) {}
// ==== engine: end ====

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "edgerun device runtime (native engine, wire frames)";
  g_core_error = py::reinterpret_steal<py::object>(
      PyErr_NewException("edgerun._core.CoreError", PyExc_RuntimeError, nullptr));
  m.attr("CoreError") = g_core_error;
  bind_wire(m);
  bind_engine(m);
}
