#include "comm.h"

#include <mpi.h>
#include <time.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "widen.h"

namespace peft::dist {
namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error(int rc) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(msg, len);
}

// MPI counts are ints: longer buffers go in pieces of at most this many elements.
constexpr size_t kMaxCount = size_t{1} << 28;

// Polling: spins first, then sleeps of these lengths (short ones for the first 20 ms of a wait).
constexpr long kSpinPolls = 200;
constexpr long kShortSleepUs = 50;
constexpr long kLongSleepUs = 500;

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Max ? MPI_MAX : MPI_SUM; }

void sleep_us(long us) {
  timespec ts{0, us * 1000};
  nanosleep(&ts, nullptr);
}

}  // namespace

const char* job_name(JobKind k) {
  switch (k) {
    case JobKind::AllReduce: return "allReduce";
    case JobKind::Broadcast: return "broadcast";
    case JobKind::Barrier: return "barrier";
    case JobKind::AllGather: return "allGather";
    case JobKind::Finalize: return "finalize";
  }
  return "?";
}

Comm& Comm::instance() {
  // Never destroyed: the comm thread may still be running while the process exits.
  static Comm* c = new Comm();
  return *c;
}

InitInfo Comm::start(double timeout_s) {
  timeout_s_.store(timeout_s);
  std::unique_lock<std::mutex> lk(mu_);
  if (finalized_.load()) throw std::runtime_error("MPI was finalized in this process; it cannot be started again");
  if (!started_.load()) {
    started_.store(true);
    thread_ = std::thread([this] { loop(); });
  }
  cv_.wait(lk, [&] { return init_done_; });
  if (!init_error_.empty()) throw std::runtime_error(init_error_);
  return info_;
}

void Comm::loop() {
  int provided = 0;
  int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (rc != MPI_SUCCESS) {
      init_error_ = "MPI_Init_thread failed: " + mpi_error(rc);
    } else {
      // Errors come back as codes (reported to JS) instead of MPI's default of aborting at once.
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
      MPI_Comm_rank(MPI_COMM_WORLD, &info_.rank);
      MPI_Comm_size(MPI_COMM_WORLD, &info_.size);
      info_.thread_level = provided;
      char version[MPI_MAX_LIBRARY_VERSION_STRING];
      int len = 0;
      MPI_Get_library_version(version, &len);
      std::string v(version, len);
      info_.library = v.substr(0, v.find_first_of("\r\n,"));
    }
    init_done_ = true;
  }
  cv_.notify_all();
  if (rc != MPI_SUCCESS) return;
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return !queue_.empty() || abort_code_.load() != 0; });
      if (abort_code_.load() != 0) {
        std::string why = abort_why_;
        lk.unlock();
        abort_now(abort_code_.load(), why);
      }
      job = queue_.front();
      queue_.pop_front();
    }
    auto t0 = Clock::now();
    try {
      run(*job);
    } catch (const std::exception& e) {
      job->error = e.what();
    }
    job->seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    bool last = job->kind == JobKind::Finalize && job->error.empty();
    {
      std::lock_guard<std::mutex> lk(mu_);
      job->done = true;
      if (last) finalized_.store(true);
    }
    done_cv_.notify_all();
    if (last) return;
  }
}

void Comm::abort_now(int code, const std::string& why) {
  std::fprintf(stderr, "node-peft distributed: rank %d of %d: %s; aborting the job (MPI_Abort, exit code %d)\n", info_.rank, info_.size, why.c_str(), code);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this is in case an implementation does
}

void Comm::complete(void* request, const Job& job) {
  MPI_Request* req = static_cast<MPI_Request*>(request);
  double limit = timeout_s_.load();
  auto start = Clock::now();
  // Spin briefly (between ranks in step a small collective finishes in microseconds), then sleep between
  // polls: the compute threads get the cores (a yielding spin would still take half of one), at a latency
  // of one sleep per poll. Open MPI makes progress only inside MPI calls, so polling is what moves the data.
  for (long polls = 0;; polls++) {
    int flag = 0;
    int rc = MPI_Test(req, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) throw std::runtime_error(std::string(job_name(job.kind)) + ": " + mpi_error(rc));
    if (flag) return;
    if (abort_code_.load() != 0) {
      std::string why;
      {
        std::lock_guard<std::mutex> lk(mu_);
        why = abort_why_;
      }
      abort_now(abort_code_.load(), why);
    }
    if (polls < kSpinPolls) continue;
    double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (limit > 0 && waited > limit) {
      char why[256];
      std::snprintf(why, sizeof why, "%s #%llu did not finish within %g s (a rank is dead, stuck or no longer calling the same collectives)",
                    job_name(job.kind), static_cast<unsigned long long>(job.id), limit);
      abort_now(3, why);
    }
    // A long wait is a peer still computing: poll less often.
    sleep_us(waited < 0.02 ? kShortSleepUs : kLongSleepUs);
  }
}

void Comm::run(Job& job) {
  auto check = [&](int rc) {
    if (rc != MPI_SUCCESS) throw std::runtime_error(std::string(job_name(job.kind)) + ": " + mpi_error(rc));
  };
  MPI_Request req = MPI_REQUEST_NULL;
  switch (job.kind) {
    case JobKind::Barrier:
      check(MPI_Ibarrier(MPI_COMM_WORLD, &req));
      complete(&req, job);
      return;
    case JobKind::Finalize:
      check(MPI_Finalize());
      return;
    case JobKind::Broadcast: {
      auto* p = static_cast<uint8_t*>(job.data);
      for (size_t at = 0; at < job.bytes; at += kMaxCount) {
        int n = static_cast<int>(std::min(kMaxCount, job.bytes - at));
        check(MPI_Ibcast(p + at, n, MPI_BYTE, job.root, MPI_COMM_WORLD, &req));
        complete(&req, job);
      }
      return;
    }
    case JobKind::AllGather: {
      int64_t mine = static_cast<int64_t>(job.bytes);
      std::vector<int64_t> sizes(info_.size);
      check(MPI_Iallgather(&mine, 1, MPI_INT64_T, sizes.data(), 1, MPI_INT64_T, MPI_COMM_WORLD, &req));
      complete(&req, job);
      std::vector<int> counts(info_.size), displs(info_.size);
      job.offsets.assign(info_.size + 1, 0);
      for (int r = 0; r < info_.size; r++) {
        job.offsets[r + 1] = job.offsets[r] + static_cast<size_t>(sizes[r]);
        if (job.offsets[r + 1] > static_cast<size_t>(INT_MAX)) throw std::runtime_error("allGather: more than 2 GiB in all");
        counts[r] = static_cast<int>(sizes[r]);
        displs[r] = static_cast<int>(job.offsets[r]);
      }
      job.gathered.resize(std::max<size_t>(1, job.offsets.back()));
      check(MPI_Iallgatherv(job.data, static_cast<int>(job.bytes), MPI_BYTE, job.gathered.data(), counts.data(), displs.data(), MPI_BYTE,
                            MPI_COMM_WORLD, &req));
      complete(&req, job);
      job.gathered.resize(job.offsets.back());
      return;
    }
    case JobKind::AllReduce: {
      size_t n = job.bytes / dtype_size(job.dtype);
      // f16/bf16 are reduced in f32 (one rounding at the end), f32 as it is.
      float* x = static_cast<float*>(job.data);
      if (job.dtype != DType::F32) {
        wide_.resize(n);
        widen(job.data, job.dtype, wide_.data(), n);
        x = wide_.data();
      }
      for (size_t at = 0; at < n; at += kMaxCount) {
        int cnt = static_cast<int>(std::min(kMaxCount, n - at));
        check(MPI_Iallreduce(MPI_IN_PLACE, x + at, cnt, MPI_FLOAT, mpi_op(job.op), MPI_COMM_WORLD, &req));
        complete(&req, job);
      }
      float divisor = job.op == ReduceOp::Mean ? static_cast<float>(info_.size) : 1.0f;
      if (job.dtype != DType::F32) narrow(x, divisor, job.data, job.dtype, n);
      else if (divisor != 1.0f) for (size_t i = 0; i < n; i++) x[i] /= divisor;
      return;
    }
  }
}

void Comm::submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!started_.load() || !init_error_.empty()) throw std::runtime_error("distributed: init() has not been called");
    if (finalized_.load()) throw std::runtime_error("distributed: finalize() has been called");
    queue_.push_back(job);
  }
  cv_.notify_all();
}

void Comm::wait(const std::shared_ptr<Job>& job) {
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, [&] { return job->done; });
}

bool Comm::is_done(const std::shared_ptr<Job>& job) {
  std::lock_guard<std::mutex> lk(mu_);
  return job->done;
}

void Comm::request_abort(int code, const std::string& why) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!started_.load() || finalized_.load() || !init_error_.empty()) return;
    abort_why_ = why;
    abort_code_.store(code == 0 ? 1 : code);
  }
  cv_.notify_all();
}

void Comm::finalize() {
  if (!started_.load() || finalized_.load()) return;
  auto job = std::make_shared<Job>();
  job->kind = JobKind::Finalize;
  submit(job);
  wait(job);
  if (!job->error.empty()) throw std::runtime_error(job->error);
  if (thread_.joinable()) thread_.join();
}

}  // namespace peft::dist
