// The Python module gradalign_fast._C: importing it runs the static TORCH_LIBRARY
// registrations of the other sources; it has no Python API of its own. (Left out of the CMake
// build, which makes a plain shared library for C++ use.)
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
