// The engine's backing-store interface: which names are URIs, which store
// each kind of name goes to, loops through URIs, local names below a network
// image, create through a store, and refusals.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "lib/backing_store.h"
#include "lib/create.h"
#include "lib/image.h"
#include "tests/unit/test_util.h"

using qed::Image;
using qed::Status;
using Code = qed::Status::Code;

TEST_SUITE_BEGIN("backing-store");

namespace {

constexpr uint64_t MiB = 1 << 20;

// A network store over in-memory files, by URI. It records every name it is
// asked about, so a test can show that a local name never reaches it.
class FakeStore final : public qed::BackingStore {
public:
  void add(const std::string &uri, std::vector<uint8_t> bytes) {
    files_[uri] = std::make_shared<qed::MemoryFile>(std::move(bytes), uri);
  }
  std::vector<std::string> asked;  // every name given to identity() or open()
  std::vector<qed::BackingPlace> places;  // what open() was told of each

  qed::Result<std::string> identity(const std::string &name) override {
    asked.push_back(name);
    return std::string("fake ").append(name);
  }
  qed::Result<std::unique_ptr<qed::File>> open(const std::string &name,
                                               const qed::BackingPlace &place) override {
    asked.push_back(name);
    places.push_back(place);
    auto it = files_.find(name);
    if (it == files_.end())
      return Status::io_error(name + ": no such export", ENOENT);
    return std::unique_ptr<qed::File>(std::make_unique<qt::SharedFile>(it->second));
  }

private:
  std::map<std::string, std::shared_ptr<qed::MemoryFile>> files_;
};

// A store that must not be used: any call fails the test.
class ForbiddenStore final : public qed::BackingStore {
public:
  qed::Result<std::string> identity(const std::string &name) override {
    FAIL_CHECK("the local store was asked about " << name);
    return Status::io_error("forbidden", EIO);
  }
  qed::Result<std::unique_ptr<qed::File>> open(const std::string &name,
                                               const qed::BackingPlace &) override {
    FAIL_CHECK("the local store was asked to open " << name);
    return Status::io_error("forbidden", EIO);
  }
};

// Creates `path` (an empty image) naming `backing` of `format`, with stores
// that can open it.
void create_over(const std::string &path, uint64_t size, const std::string &backing,
                 const std::string &format, const qed::BackingStores &stores) {
  qed::CreateOptions o;
  o.size = size;
  o.backing_file = backing;
  o.backing_format = format;
  o.backing_stores = stores;
  const Status s = qed::create_image(path, o);
  INFO(s.message());
  REQUIRE(s.is_ok());
}

// Changes the backing file name an image's header records (same length or
// shorter than the room after the header).
void set_backing_name(const std::string &path, const std::string &name, bool raw) {
  uint8_t h[64];
  {
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char *>(h), 64);
  }
  qt::put_le64(h + 16, qed::kFeatureBackingFile | (raw ? qed::kFeatureBackingNoProbe : 0));
  qt::put_le32(h + 56, 64);
  qt::put_le32(h + 60, uint32_t(name.size()));
  qt::patch_file(path, 0, h, 64);
  qt::patch_file(path, 64, name.data(), name.size());
}

qed::OpenOptions with_stores(const qed::BackingStores &stores) {
  qed::OpenOptions o;
  o.backing_stores = stores;
  return o;
}

}  // namespace

TEST_CASE("is_uri: a ':' with no '/' before it") {
  for (const char *uri : {"nbd://host/export", "nbd://host:10809", "nbd+unix:///?socket=/s",
                          "nbds+unix:///e?socket=/run/b.sock", "nbd:unix:/tmp/s", "http:x",
                          "file:/images/base.raw", "json:{}", "a:", ":b", "C:\\base.raw"}) {
    CAPTURE(uri);
    CHECK(qed::is_uri(uri));
  }
  for (const char *local : {"base.raw", "/images/a:b.raw", "dir/nbd:x", "./nbd:x",
                            "../nbd://x", "/nbd://host/x", "", "name with spaces"}) {
    CAPTURE(local);
    CHECK(!qed::is_uri(local));
  }
}

TEST_CASE("a URI goes to the network store, never to the file system") {
  qt::TempDir dir;
  std::vector<uint8_t> base(3 * MiB + 100);
  qt::fill_pattern(base.data(), base.size(), 4);
  std::fill(base.begin() + MiB, base.begin() + 2 * MiB, 0);
  auto fake = std::make_shared<FakeStore>();
  fake->add("nbd://fake/base", base);
  qed::BackingStores stores;
  stores.local = std::make_shared<ForbiddenStore>();
  stores.network = fake;

  // The size comes from the store's file, rounded up to 512.
  create_over(dir.file("top.qed"), 0, "nbd://fake/base", "raw", stores);
  CHECK(fake->asked == std::vector<std::string>{"nbd://fake/base"});
  fake->asked.clear();
  {
    auto r = Image::open(dir.file("top.qed"), with_stores(stores));
    INFO(r.status().message());
    REQUIRE(r.is_ok());
    auto &img = **r;
    CHECK(img.size() == (base.size() + 511) / 512 * 512);
    std::vector<uint8_t> want = base;
    want.resize(img.size(), 0);
    QT_CHECK_SAME(qt::read_all(img), want);
    CHECK(img.description().find("raw nbd://fake/base") != std::string::npos);
  }
  CHECK(fake->asked == std::vector<std::string>{"nbd://fake/base", "nbd://fake/base"});

  // Writes land in the overlay; the store's file is never written.
  auto o = with_stores(stores);
  o.read_only = false;
  auto w = Image::open(dir.file("top.qed"), o);
  REQUIRE(w.is_ok());
  std::vector<uint8_t> data(1000, 0xab);
  REQUIRE((*w)->write(data.data(), data.size(), 5000, false).is_ok());
  REQUIRE((*w)->close().is_ok());
  auto again = fake->open("nbd://fake/base", qed::BackingPlace{});
  REQUIRE(again.is_ok());
  std::vector<uint8_t> head(6000);
  REQUIRE((*again)->pread(head.data(), head.size(), 0).is_ok());
  CHECK(std::equal(head.begin(), head.end(), base.begin()));
}

TEST_CASE("a local name never reaches the network store") {
  qt::TempDir dir;
  std::vector<uint8_t> raw(MiB, 9);
  qt::write_whole_file(dir.file("base.raw"), raw);
  auto fake = std::make_shared<FakeStore>();
  qed::BackingStores stores;
  stores.network = fake;
  // Names with a ':' after a '/' are paths ("dir/nbd:x" is in dir).
  std::filesystem::create_directory(dir.file("d"));
  qt::write_whole_file(dir.file("d/nbd:x.raw"), raw);
  for (const char *name : {"base.raw", "d/nbd:x.raw", "./base.raw"}) {
    CAPTURE(name);
    create_over(dir.file("t.qed"), 0, name, "raw", stores);
    auto img = Image::open(dir.file("t.qed"), with_stores(stores));
    INFO(img.status().message());
    REQUIRE(img.is_ok());
    QT_CHECK_SAME(qt::read_all(**img), raw);
    std::filesystem::remove(dir.file("t.qed"));
  }
  CHECK(fake->asked.empty());
}

TEST_CASE("without a network store every URI is refused, even one that names a file") {
  qt::TempDir dir;
  // A file literally called "nbd:base.raw" next to the image: the name is a
  // URI, so it must not be opened.
  qt::write_whole_file(dir.file("nbd:base.raw"), std::vector<uint8_t>(MiB, 1));
  qt::make_image(dir.file("t.qed"), MiB, 65536, 4);
  set_backing_name(dir.file("t.qed"), "nbd:base.raw", true);
  auto r = Image::open(dir.file("t.qed"), qed::OpenOptions{});
  REQUIRE(!r.is_ok());
  INFO(r.status().message());
  CHECK(r.status().code() == Code::kNotSupported);
  CHECK(r.status().message().find(dir.file("t.qed")) != std::string::npos);
  CHECK(r.status().message().find("\"nbd:base.raw\"") != std::string::npos);
  CHECK(r.status().message().find("network backing files are not enabled") != std::string::npos);

  SUBCASE("a refusing store gives its reason") {
    qed::BackingStores stores;
    stores.network = std::make_shared<qed::RefusingBackingStore>("say allow-backing=network");
    auto s = Image::open(dir.file("t.qed"), with_stores(stores));
    REQUIRE(!s.is_ok());
    CHECK(s.status().message() == dir.file("t.qed") +
                                      ": backing file \"nbd:base.raw\": say allow-backing=network");
  }
  SUBCASE("and create refuses it the same way") {
    qed::CreateOptions o;
    o.backing_file = "nbd:base.raw";
    const Status s = qed::create_image(dir.file("new.qed"), o);
    INFO(s.message());
    CHECK(!s.is_ok());
    CHECK(s.message().find("\"nbd:base.raw\"") != std::string::npos);
    CHECK(!std::filesystem::exists(dir.file("new.qed")));
  }
}

TEST_CASE("a chain of QED images behind URIs, and a loop among them") {
  qt::TempDir dir;
  auto fake = std::make_shared<FakeStore>();
  qed::BackingStores stores;
  stores.local = std::make_shared<ForbiddenStore>();
  stores.network = fake;
  std::vector<uint8_t> raw(2 * MiB);
  qt::fill_pattern(raw.data(), raw.size(), 11);
  fake->add("nbd://h/raw", raw);
  // mid: a QED image over nbd://h/raw, served at nbd://h/mid, with a write.
  create_over(dir.file("mid.qed"), 2 * MiB, "nbd://h/raw", "raw", stores);
  {
    auto o = with_stores(stores);
    o.read_only = false;
    auto m = Image::open(dir.file("mid.qed"), o);
    REQUIRE(m.is_ok());
    std::vector<uint8_t> d(4096, 0x77);
    REQUIRE((*m)->write(d.data(), d.size(), 65536 + 100, false).is_ok());
    std::memcpy(raw.data() + 65536 + 100, d.data(), d.size());
    REQUIRE((*m)->close().is_ok());
  }
  fake->add("nbd://h/mid", qt::read_whole_file(dir.file("mid.qed")));
  create_over(dir.file("top.qed"), 0, "nbd://h/mid", "", stores);  // probed: qed
  {
    fake->places.clear();
    auto t = Image::open(dir.file("top.qed"), with_stores(stores));
    INFO(t.status().message());
    REQUIRE(t.is_ok());
    CHECK((*t)->size() == 2 * MiB);
    QT_CHECK_SAME(qt::read_all(**t), raw);
    CHECK((*t)->description().find("qed nbd://h/mid") != std::string::npos);
    // The store is told whose words each name is: the local image's, then
    // the remote image's.
    REQUIRE(fake->places.size() == 2);
    CHECK(!fake->places[0].below_network);
    CHECK(fake->places[1].below_network);
  }

  SUBCASE("a loop through URIs is found by name, without a lookup") {
    // nbd://h/a names nbd://h/b, which names nbd://h/a.
    qt::make_image(dir.file("a.qed"), MiB, 65536, 4);
    set_backing_name(dir.file("a.qed"), "nbd://h/b", false);
    qt::make_image(dir.file("b.qed"), MiB, 65536, 4);
    set_backing_name(dir.file("b.qed"), "nbd://h/a", false);
    fake->add("nbd://h/a", qt::read_whole_file(dir.file("a.qed")));
    fake->add("nbd://h/b", qt::read_whole_file(dir.file("b.qed")));
    auto r = Image::open(dir.file("a.qed"), with_stores(stores));  // top: local a.qed
    REQUIRE(!r.is_ok());
    INFO(r.status().message());
    CHECK(r.status().code() == Code::kCorruption);
    CHECK(r.status().message().find("nbd://h/b: backing file loop") != std::string::npos);
  }
  SUBCASE("a local name below a network image is refused") {
    qt::make_image(dir.file("r.qed"), MiB, 65536, 4);
    set_backing_name(dir.file("r.qed"), "/etc/passwd", true);
    fake->add("nbd://h/r", qt::read_whole_file(dir.file("r.qed")));
    qt::make_image(dir.file("t2.qed"), MiB, 65536, 4);
    set_backing_name(dir.file("t2.qed"), "nbd://h/r", false);
    auto r = Image::open(dir.file("t2.qed"), with_stores(stores));
    REQUIRE(!r.is_ok());
    INFO(r.status().message());
    CHECK(r.status().code() == Code::kNotSupported);
    CHECK(r.status().message().find("nbd://h/r: backing file \"/etc/passwd\": a local backing "
                                    "file below a network image is refused") !=
          std::string::npos);
  }
  SUBCASE("an export the store cannot open names the image and the URI") {
    set_backing_name(dir.file("top.qed"), "nbd://h/gone", true);
    auto r = Image::open(dir.file("top.qed"), with_stores(stores));
    REQUIRE(!r.is_ok());
    CHECK(r.status().message() == dir.file("top.qed") +
                                      ": backing file \"nbd://h/gone\": nbd://h/gone: no such export");
    CHECK(r.status().errno_value() == ENOENT);
  }
}

TEST_CASE("the POSIX store: identity is device and inode") {
  qt::TempDir dir;
  qt::write_whole_file(dir.file("f"), std::vector<uint8_t>(10, 1));
  REQUIRE(::symlink("f", dir.file("g").c_str()) == 0);
  qed::PosixBackingStore store;
  auto a = store.identity(dir.file("f"));
  auto b = store.identity(dir.file("g"));
  REQUIRE(a.is_ok());
  REQUIRE(b.is_ok());
  CHECK(*a == *b);
  auto missing = store.identity(dir.file("nope"));
  REQUIRE(!missing.is_ok());
  CHECK(missing.status().message().find(dir.file("nope")) != std::string::npos);
  auto f = store.open(dir.file("g"), qed::BackingPlace{});
  REQUIRE(f.is_ok());
  CHECK(*(*f)->size() == 10);
}

TEST_SUITE_END();
