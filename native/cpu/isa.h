// CPU feature detection (CPUID + XGETBV) and the kernel path picked at run time.
#pragma once
#include <string>
#include <vector>

// x86-64 builds compile the SIMD kernel files (foo_avx2.cc, foo_avx512.cc, ...) and dispatch to them; other
// architectures build without them and run the portable scalar paths, so every dispatch site guards its
// x86 cases with this.
#if defined(__x86_64__) || defined(_M_X64)
#define PEFT_X86 1
#else
#define PEFT_X86 0
#endif

namespace peft {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2_fma = false;     // AVX2 + FMA + F16C, OS saves ymm
  bool avx512 = false;       // AVX-512 F/BW/DQ/VL, OS saves zmm
  bool avx512_bf16 = false;  // vdpbf16ps
  bool avx512_vnni = false;  // vpdpbusd
  bool avx512_fp16 = false;
  bool amx_bf16 = false;     // AMX tiles present (tile data permission requested separately)
  bool amx_int8 = false;
  bool amx_usable = false;   // the kernel granted tile-data permission
  bool clflushopt = false;
  int l1d_bytes = 32 * 1024, l2_bytes = 1024 * 1024, l3_bytes = 8 * 1024 * 1024;
};

const CpuFeatures& cpu_features();
Isa active_isa();
bool amx_enabled();  // AMX present, permitted, and not turned off
// Forces a path; throws RangeError (ERR_OUT_OF_RANGE) when the CPU lacks it.
void set_isa(const std::string& name);
void set_amx(bool on);
const char* isa_name(Isa i);
std::vector<std::string> feature_names();
// Reads NODE_PEFT_ISA / NODE_PEFT_AMX once (at addon load); throws RangeError for bad values.
void init_isa_from_env();

}  // namespace peft
