// The one thread of the process that talks to MPI. Collectives are queued to it and run there in order
// (MPI_Init_thread asks for MPI_THREAD_FUNNELED only: no MPI call is ever made from another thread), so
// the JS thread and the kernels' thread pool keep computing while an exchange is in flight.
// Every collective is started non-blocking and polled: a collective that has not finished when the
// deadline passes, or an abort asked for from JS, ends the whole job through MPI_Abort (never a hang).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.h"

namespace peft::dist {

enum class JobKind { AllReduce, Broadcast, Barrier, AllGather, Finalize };
enum class ReduceOp { Sum, Mean, Max };

const char* job_name(JobKind k);

struct Job {
  JobKind kind = JobKind::Barrier;
  uint64_t id = 0;
  // AllReduce / Broadcast / AllGather: the host memory (in place; AllGather reads it).
  void* data = nullptr;
  size_t bytes = 0;
  DType dtype = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  int root = 0;
  // AllGather: every rank's bytes, rank after rank, and where each rank's part starts (size + 1 entries).
  std::vector<uint8_t> gathered;
  std::vector<size_t> offsets;
  // Set by the comm thread, read after done.
  std::string error;
  double seconds = 0;  // from the start of the MPI call to its completion
  bool done = false;
};

struct InitInfo {
  int rank = 0;
  int size = 1;
  int thread_level = 0;
  std::string library;  // MPI_Get_library_version's first line
};

class Comm {
 public:
  static Comm& instance();

  // Starts the thread and MPI on it; throws std::runtime_error with MPI's reason when it fails.
  InitInfo start(double timeout_s);
  bool started() const { return started_.load(); }
  bool finalized() const { return finalized_.load(); }
  int rank() const { return info_.rank; }
  int size() const { return info_.size; }
  void set_timeout(double s) { timeout_s_.store(s); }

  // Queues a job (ids in submission order); the caller keeps the memory alive until it is done.
  void submit(const std::shared_ptr<Job>& job);
  // Blocks the caller until the job is done.
  void wait(const std::shared_ptr<Job>& job);
  bool is_done(const std::shared_ptr<Job>& job);
  // Asks the comm thread to end the job with MPI_Abort(code) after printing `why`; returns at once.
  void request_abort(int code, const std::string& why);
  // MPI_Finalize on the comm thread, then the thread ends.
  void finalize();

 private:
  Comm() = default;
  void loop();
  void run(Job& job);
  // Polls a started request until it completes; aborts the job on the deadline or an abort request.
  void complete(void* request, const Job& job);
  [[noreturn]] void abort_now(int code, const std::string& why);

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;       // work queued (comm thread waits on it)
  std::condition_variable done_cv_;  // a job finished (waiters)
  std::deque<std::shared_ptr<Job>> queue_;
  std::atomic<bool> started_{false}, finalized_{false};
  std::atomic<int> abort_code_{0};
  std::string abort_why_;
  std::atomic<double> timeout_s_{0};
  InitInfo info_;
  std::string init_error_;
  bool init_done_ = false;
  std::vector<float> wide_;  // f16/bf16 widened to f32 for the reduction
};

}  // namespace peft::dist
