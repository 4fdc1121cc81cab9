// Sanitizer defaults of the fuzz targets (ASAN_OPTIONS in the environment
// still wins). Both are about speed, the engine allocating much per run:
//   quarantine_size_mb=32 (default 256): a run frees a few MiB at most, so a
//     use after free within a run is still caught, while the allocator reuses
//     warm pages instead of faulting in fresh ones (a quarter of the time);
//   malloc_context_size=12 (default 30): stacks recorded per allocation; a
//     report still shows where a block was allocated and freed, and a finding
//     replays with ASAN_OPTIONS=malloc_context_size=30 for the full stacks.
extern "C" const char *__asan_default_options() {
  return "quarantine_size_mb=32:malloc_context_size=12";
}
