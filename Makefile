# pbw build. Plain `make` builds build/pbw, build/libpbw.a and build/libpbw.so.
# CUDA sources under src/cuda are compiled and linked when nvcc is on PATH (NVCC= disables).
#   make test    build and run every test        make asan   tests under ASan + UBSan
#   make test-cuda  the CUDA parity tests (needs a GPU)
#   make fuzz    run each fuzz target briefly     make bench  CPU benchmarks vs PyTorch
#   make demo    the quick-start job              make bench-semantic  edits judged by geometry

CC      ?= cc
CFLAGS  ?= -O3 -march=x86-64-v3 -mtune=generic
NVCC    ?= $(shell command -v nvcc 2>/dev/null)
BUILD   ?= build
FUZZ_SECONDS ?= 30

BLAS_INC := $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas))
WARN    := -Wall -Wextra -Wpedantic -Wshadow -Wno-unused-parameter -Wno-missing-field-initializers
BASE    := -std=c11 -D_GNU_SOURCE -fPIC -fopenmp $(WARN) -Isrc $(if $(BLAS_INC),-I$(BLAS_INC))
LDLIBS  := -fopenmp -lopenblas -llapacke -ljson-c -lzip -lpng -ljpeg -lpcre2-8 -lutf8proc -lgif -lz -lm -lpthread

LIB_SRC := $(wildcard src/core/*.c src/cpu/*.c src/formats/*.c src/models/*.c src/paint/*.c)
APP_SRC := $(wildcard src/app/*.c)
TEST_SRC:= $(wildcard tests/*.c)
CU_SRC  := $(wildcard src/cuda/*.cu)

ifneq ($(NVCC),)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  BASE    += -DPBW_HAVE_CUDA -I$(CUDA_HOME)/include
  LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lcublas -lcudnn -lstdc++
  CU_OBJ  := $(CU_SRC:%.cu=$(BUILD)/obj/%.o)
  NVFLAGS ?= -O3 -std=c++17 -Xcompiler -fPIC -Isrc -DPBW_HAVE_CUDA \
             -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80
endif

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(CU_OBJ)
APP_OBJ := $(APP_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ:= $(TEST_SRC:%.c=$(BUILD)/obj/%.o)
DEPS_OK := $(BUILD)/.deps-ok

.PHONY: all test test-cuda asan fuzz bench bench-semantic demo clean setup
all: $(BUILD)/pbw $(BUILD)/libpbw.a $(BUILD)/libpbw.so

# Install missing Debian packages once (tools/setup.sh prints the apt-get line when not root).
$(DEPS_OK): tools/setup.sh
	@mkdir -p $(BUILD)
	@tools/setup.sh --check || tools/setup.sh
	@touch $@
setup:
	tools/setup.sh --python

$(BUILD)/obj/%.o: %.c | $(DEPS_OK)
	@mkdir -p $(dir $@)
	$(CC) $(BASE) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cu | $(DEPS_OK)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libpbw.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libpbw.so: $(LIB_OBJ)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/pbw: $(APP_OBJ) $(BUILD)/libpbw.a
	$(CC) $(LDFLAGS) -o $@ $(APP_OBJ) $(BUILD)/libpbw.a $(LDLIBS)

$(BUILD)/pbw_tests: $(TEST_OBJ) $(BUILD)/libpbw.a
	$(CC) $(LDFLAGS) -o $@ $(TEST_OBJ) $(BUILD)/libpbw.a $(LDLIBS)

test: all $(BUILD)/pbw_tests
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BUILD)/pbw_tests $(T)

# The CUDA parity tests (cuda_*: every op and the models, CUDA against the CPU); needs a GPU.
test-cuda: all $(BUILD)/pbw_tests
	PBW_REQUIRE_CUDA=1 $(BUILD)/pbw_tests $(if $(T),$(T),cuda_)

# Sanitizer build in its own folder, CPU only (nvcc objects are not instrumented).
asan:
	$(MAKE) --no-print-directory BUILD=build-asan NVCC= \
	  CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=address,undefined" build-asan/pbw build-asan/pbw_tests
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_NUM_THREADS=2 \
	  build-asan/pbw_tests $(T)

FUZZ_TARGETS := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
# The library is compiled once with the fuzzing sanitizers (fuzzer-no-link: coverage without
# libFuzzer's main), then each target links against it. CPU only, like asan.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined -Isrc $(if $(BLAS_INC),-I$(BLAS_INC)) -fopenmp
FUZZ_OBJ := $(LIB_SRC:%.c=build-fuzz/obj/%.o)
build-fuzz/obj/%.o: %.c | $(DEPS_OK)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
build-fuzz/libpbw_fuzz.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^
build-fuzz/fuzz_%: fuzz/fuzz_%.c build-fuzz/libpbw_fuzz.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $< build-fuzz/libpbw_fuzz.a -o $@ \
	  $(filter-out -lcudart -lcublasLt -lcublas -lcudnn,$(LDLIBS))
fuzz: $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build-fuzz/corpus_$$t; cp -n fuzz/corpus/$$t/* build-fuzz/corpus_$$t/ 2>/dev/null; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -max_len=1048576 \
	    -print_final_stats=1 build-fuzz/corpus_$$t 2>build-fuzz/$$t.log || { tail -50 build-fuzz/$$t.log; exit 1; }; \
	  grep -E 'stat::number_of_executed_units' build-fuzz/$$t.log; \
	done

$(BUILD)/bench_edit: bench/bench_edit.c $(BUILD)/libpbw.a
	$(CC) $(BASE) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpbw.a $(LDLIBS)

$(BUILD)/bench_ops: bench/bench_ops.c $(BUILD)/libpbw.a
	$(CC) $(BASE) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpbw.a $(LDLIBS)

$(BUILD)/bench_clip: bench/bench_clip.c $(BUILD)/libpbw.a
	$(CC) $(BASE) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpbw.a $(LDLIBS)

$(BUILD)/bench_stylegan2: bench/bench_stylegan2.c $(BUILD)/libpbw.a
	$(CC) $(BASE) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpbw.a $(LDLIBS)

$(BUILD)/bench_cma: bench/bench_cma.c $(BUILD)/libpbw.a
	$(CC) $(BASE) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpbw.a $(LDLIBS)

bench: all $(BUILD)/bench_ops $(BUILD)/bench_clip $(BUILD)/bench_stylegan2 $(BUILD)/bench_cma
	$(BUILD)/bench_cma
	bench/run.sh
	bench/run_clip.sh
	bench/run_stylegan2.sh

demo: all
	tools/demo.sh

# The semantic benchmark on the shapes-world models (bench/semantic.sh; N=, MODES=, EDIT_ARGS=).
bench-semantic: all
	bench/semantic.sh

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(APP_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(FUZZ_OBJ:.o=.d)
