#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "plugin/stream_task.h"

#include "common/check_log.h"
#include "common/printable.h"

namespace qed_plugin {

namespace {

void run_stream(qed::Stream &stream, const std::shared_ptr<qed::Image> &image) {
  qed::lower_thread_priority();
  const std::string path = qed_nbdkit::printable(image->path());
  const std::string was = image->backing()
                              ? qed_nbdkit::printable(image->backing()->description())
                              : std::string();
  try {
    auto done = stream.run();
    if (!done)
      nbdkit_error("%s: stream: %s; stopped (what was copied stays; stream=true resumes)",
                   path.c_str(), qed_nbdkit::printable(done.status().message()).c_str());
    else if (*done && was.empty())
      qed_nbdkit::log_info("%s: stream: the image has no backing file: nothing to stream",
                           path.c_str());
    else if (*done)
      qed_nbdkit::log_info("%s: stream: done: the image is standalone (%s is no longer used)",
                           path.c_str(), was.c_str());
  } catch (const std::exception &e) {
    nbdkit_error("%s: stream: %s; stopped", path.c_str(), e.what());
  }
}

}  // namespace

void StreamTask::start(std::shared_ptr<qed::Image> image, uint64_t rate) {
  qed::MutexLock lock(mu_);
  if (stream_)
    return;
  const std::string path = qed_nbdkit::printable(image->path());
  qed::StreamOptions o;
  o.rate = rate;
  o.progress_every = std::chrono::seconds(5);
  o.on_progress = [path](const qed::StreamProgress &p) {
    qed_nbdkit::log_info("%s: stream: %s", path.c_str(), qed::describe(p).c_str());
  };
  o.on_pause = [path](const qed::Status &why) {
    qed_nbdkit::log_info("%s: stream: paused, the backing file failed (%s); trying again",
                         path.c_str(), qed_nbdkit::printable(why.message()).c_str());
  };
  o.on_resume = [path] {
    qed_nbdkit::log_info("%s: stream: resumed, the backing file answers again", path.c_str());
  };
  stream_ = std::make_unique<qed::Stream>(*image, std::move(o));
  qed::Stream &stream = *stream_;
  // The thread keeps the image alive until it ends.
  thread_ = std::thread([&stream, image] { run_stream(stream, image); });
}

void StreamTask::stop() {
  qed::MutexLock lock(mu_);
  if (!stream_)
    return;
  stream_->stop();
  if (thread_.joinable())
    thread_.join();
  stream_.reset();
}

}  // namespace qed_plugin
