// The plugin's stream=true: the engine's Stream (lib/stream.h) on a thread of
// its own, started once nbdkit has forked (.after_fork) and stopped in
// .cleanup. Progress, pauses and the end go to nbdkit's log.
//
// mu_ guards thread_ and stream_: start() and stop() may race only with each
// other; the thread itself touches neither.
#pragma once

#include <cstdint>
#include <memory>
#include <thread>

#include "lib/image.h"
#include "lib/stream.h"
#include "lib/thread_annotations.h"

namespace qed_plugin {

class StreamTask {
public:
  ~StreamTask() { stop(); }
  // Starts streaming into `image` (open read-write) at most `rate` bytes per
  // second (0: no limit).
  void start(std::shared_ptr<qed::Image> image, uint64_t rate);
  // Stops the stream and waits for its thread; what was copied stays.
  void stop();

private:
  qed::Mutex mu_;
  std::unique_ptr<qed::Stream> stream_ GUARDED_BY(mu_);
  std::thread thread_ GUARDED_BY(mu_);
};

}  // namespace qed_plugin
