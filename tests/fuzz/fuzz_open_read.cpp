// Arbitrary bytes as a QCOW2, QCOW v1 or probed image (and as its own backing file): open,
// describe, read a sample. Nothing may crash, hang, or allocate beyond the validated sizes.
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vdfuzz::Harness h;
  h.put("/img", {data, size});
  h.put("/base", {data, size});
  for (const char* fmt : {"qcow2", "qcow", static_cast<const char*>(nullptr)}) {
    auto disk = h.open("/img", fmt, false);
    if (!disk) continue;
    for (size_t i = 0; i < disk->depth(); ++i) {
      (void)disk->image(i).format_info();
      (void)disk->image(i).snapshots();
    }
    h.read_sample(*disk, static_cast<uint32_t>(size));
    (void)disk->close();
  }
  return 0;
}
