#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "../core/errors.h"

#if PEFT_X86
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace peft {
namespace {

#if PEFT_X86
unsigned long long xgetbv0() {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

// Linux refuses AMX tile instructions until the process asks for the tile-data state.
bool request_amx_permission() {
#ifdef __linux__
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

int read_cache_size(int index, int fallback) {
  std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
  std::string s;
  if (!(f >> s) || s.empty()) return fallback;
  int mult = 1;
  if (s.back() == 'K') mult = 1024, s.pop_back();
  else if (s.back() == 'M') mult = 1024 * 1024, s.pop_back();
  int v = std::atoi(s.c_str());
  return v > 0 ? v * mult : fallback;
}

CpuFeatures detect() {
  CpuFeatures f;
#if PEFT_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
  bool ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
  unsigned b7 = 0, c7 = 0, d7 = 0, a71 = 0;
  __cpuid_count(7, 0, a, b7, c7, d7);
  unsigned max_sub = a;
  if (max_sub >= 1) {
    unsigned bb, cc, dd;
    __cpuid_count(7, 1, a71, bb, cc, dd);
  }
  bool avx2 = b7 & (1u << 5);
  f.avx2_fma = ymm_os && avx2 && fma && f16c;
  bool avx512f = b7 & (1u << 16), dq = b7 & (1u << 17), bw = b7 & (1u << 30), vl = b7 & (1u << 31);
  f.avx512 = f.avx2_fma && zmm_os && avx512f && dq && bw && vl;
  f.avx512_vnni = f.avx512 && (c7 & (1u << 11));
  f.avx512_bf16 = f.avx512 && (a71 & (1u << 5));
  f.avx512_fp16 = f.avx512 && (d7 & (1u << 23));
  f.clflushopt = b7 & (1u << 23);
  bool amx_os = (xcr0 & (3ull << 17)) == (3ull << 17);
  f.amx_bf16 = f.avx512 && amx_os && (d7 & (1u << 22));
  f.amx_int8 = f.avx512 && amx_os && (d7 & (1u << 25));
  if (f.amx_bf16 || f.amx_int8) f.amx_usable = request_amx_permission();
#endif
  f.l1d_bytes = read_cache_size(0, f.l1d_bytes);
  f.l2_bytes = read_cache_size(2, f.l2_bytes);
  f.l3_bytes = read_cache_size(3, f.l3_bytes);
  return f;
}

Isa best_isa(const CpuFeatures& f) { return f.avx512 ? Isa::Avx512 : f.avx2_fma ? Isa::Avx2 : Isa::Scalar; }

std::atomic<int> g_isa{-1};
std::atomic<int> g_amx{1};

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa(cpu_features()));
    g_isa.store(v);
  }
  return static_cast<Isa>(v);
}

bool amx_enabled() {
  const CpuFeatures& f = cpu_features();
  return f.amx_usable && g_amx.load() && active_isa() == Isa::Avx512;
}

const char* isa_name(Isa i) { return i == Isa::Avx512 ? "avx512" : i == Isa::Avx2 ? "avx2" : "scalar"; }

void set_isa(const std::string& name) {
  const CpuFeatures& f = cpu_features();
  Isa want;
  if (name == "avx512") want = Isa::Avx512;
  else if (name == "avx2") want = Isa::Avx2;
  else if (name == "scalar") want = Isa::Scalar;
  else fail_range(cat("NODE_PEFT_ISA: expected avx512, avx2 or scalar, got \"", name, "\""));
  if (static_cast<int>(want) > static_cast<int>(best_isa(f)))
    fail_range(cat("NODE_PEFT_ISA=", name, ": this CPU does not support ", name, " (best available: ", isa_name(best_isa(f)), ")"));
  g_isa.store(static_cast<int>(want));
}

void set_amx(bool on) { g_amx.store(on ? 1 : 0); }

std::vector<std::string> feature_names() {
  const CpuFeatures& f = cpu_features();
  std::vector<std::string> out;
  if (f.avx2_fma) out.push_back("avx2"), out.push_back("fma"), out.push_back("f16c");
  if (f.avx512) out.push_back("avx512f");
  if (f.avx512_bf16) out.push_back("avx512bf16");
  if (f.avx512_vnni) out.push_back("avx512vnni");
  if (f.avx512_fp16) out.push_back("avx512fp16");
  if (f.amx_bf16) out.push_back("amx-bf16");
  if (f.amx_int8) out.push_back("amx-int8");
  if (amx_enabled()) out.push_back("amx");
  if (f.clflushopt) out.push_back("clflushopt");
  return out;
}

void init_isa_from_env() {
  if (const char* isa = std::getenv("NODE_PEFT_ISA"); isa && *isa) set_isa(isa);
  if (const char* amx = std::getenv("NODE_PEFT_AMX"); amx && *amx) {
    std::string v(amx);
    if (v == "0") set_amx(false);
    else if (v == "1") {
      if (!cpu_features().amx_usable)
        fail_range("NODE_PEFT_AMX=1: AMX tiles are not available on this CPU (or the kernel refused tile-data permission)");
      set_amx(true);
    } else fail_range(cat("NODE_PEFT_AMX: expected 0 or 1, got \"", v, "\""));
  }
}

}  // namespace peft
