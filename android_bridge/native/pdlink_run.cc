// pdlink_run: run a compiled pdlink package (greedy decoding) from C++, without Python.
//
// What it is for:
//  * Checking cross-compiled packages: built for aarch64 with aarch64-linux-gnu-g++ against the
//    aarch64 wheel's libtvm_runtime.so / libtvm_ffi.so, it runs a `linux-arm64` package under
//    qemu-aarch64-static, and its tokens are compared with the host package's
//    (pdlink.android_bridge.qemu_runner, tests/model/test_arm64_emulation.py). Built natively with
//    g++ against the x86_64 wheel it runs the host package, which validates the runner itself.
//  * The seed of the Android/JNI bridge: these are exactly the calls a JNI wrapper makes -- load
//    the model library, create the Relax VM (vm_load_executable + vm_initialization), load the
//    weights into tensors in manifest order, create the paged KV cache, then
//    kv_state_begin_forward / prefill|decode / kv_state_end_forward per step.
//
// Uses only the tvm_ffi headers shipped in the apache-tvm-ffi wheel (tvm/ffi, dlpack).
//
// Usage: pdlink_run --package DIR --lib MODEL.so --prompt-ids 1,2,3 [--max-tokens 8]
//                   [--context 1024]
// Prints one JSON object: {"tokens": [...], "top2_gaps": [...], "load_s": .., "prefill_s": ..,
// "decode_s": ..}. top2_gaps[i] is logit(best) - logit(second best) when token i was chosen
// (a tiny gap means a near tie, where float differences between CPUs may flip the choice).
// Threads: TVM_NUM_THREADS (read by the TVM runtime).
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
namespace json = tvm::ffi::json;

namespace {

constexpr DLDevice kCPU{kDLCPU, 0};

// Host memory for tensors, 64-byte aligned as TVM's kernels expect.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n ? n : 64);
    if (t->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor Empty(std::vector<int64_t> shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), dtype, kCPU);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json::Object ParseObject(const std::string& text, const std::string& what) {
  ffi::String error;
  json::Value v = json::Parse(ffi::String(text), &error);
  if (!error.empty()) throw std::runtime_error("bad JSON in " + what + ": " + std::string(error));
  return v.cast<json::Object>();
}

DLDataType SafetensorsDType(const std::string& s) {
  static const std::map<std::string, DLDataType> table = {
      {"F32", {kDLFloat, 32, 1}},  {"F16", {kDLFloat, 16, 1}}, {"BF16", {kDLBfloat, 16, 1}},
      {"F64", {kDLFloat, 64, 1}},  {"I8", {kDLInt, 8, 1}},     {"I16", {kDLInt, 16, 1}},
      {"I32", {kDLInt, 32, 1}},    {"I64", {kDLInt, 64, 1}},   {"U8", {kDLUInt, 8, 1}},
      {"U16", {kDLUInt, 16, 1}},   {"U32", {kDLUInt, 32, 1}},  {"U64", {kDLUInt, 64, 1}},
      {"BOOL", {kDLBool, 8, 1}}};
  auto it = table.find(s);
  if (it == table.end()) throw std::runtime_error("unsupported safetensors dtype " + s);
  return it->second;
}

// Weights in `names` order from a safetensors file: u64 header length, JSON header, raw data.
ffi::Array<ffi::Tensor> LoadParams(const std::string& path, const ffi::Array<ffi::Any>& names) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  uint8_t len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  if (!in) throw std::runtime_error("truncated safetensors header in " + path);
  json::Object index = ParseObject(header, path);
  const uint64_t data_start = 8 + header_len;
  ffi::Array<ffi::Tensor> params;
  for (const ffi::Any& any_name : names) {
    ffi::String name = any_name.cast<ffi::String>();
    auto found = index.find(name);
    if (found == index.end()) throw std::runtime_error("params file lacks " + std::string(name));
    json::Object entry = (*found).second.cast<json::Object>();
    std::vector<int64_t> shape;
    for (const ffi::Any& d : entry["shape"].cast<json::Array>()) shape.push_back(d.cast<int64_t>());
    json::Array offsets = entry["data_offsets"].cast<json::Array>();
    int64_t begin = offsets[0].cast<int64_t>(), end = offsets[1].cast<int64_t>();
    ffi::Tensor t = Empty(shape, SafetensorsDType(std::string(entry["dtype"].cast<ffi::String>())));
    if (static_cast<size_t>(end - begin) != ffi::GetDataSize(t))
      throw std::runtime_error("size mismatch for " + std::string(name));
    in.seekg(static_cast<std::streamoff>(data_start + begin));
    in.read(static_cast<char*>(t.data_ptr()), end - begin);
    if (!in) throw std::runtime_error("truncated data for " + std::string(name));
    params.push_back(t);
  }
  return params;
}

ffi::Function Required(const ffi::Module& mod, const char* name) {
  ffi::Optional<ffi::Function> f = mod->GetFunction(ffi::String(name), true);
  if (!f.has_value()) throw std::runtime_error(std::string("module lacks function ") + name);
  return f.value();
}

struct Pick {
  int32_t token;
  float gap;
};

// Greedy choice over the last row of float32 logits.
Pick Argmax(const ffi::Tensor& logits) {
  if (logits.dtype().code != kDLFloat || logits.dtype().bits != 32)
    throw std::runtime_error("logits are not float32");
  int64_t vocab = logits.shape()[logits.ndim() - 1];
  int64_t numel = 1;
  for (int64_t d : logits.shape()) numel *= d;
  const float* row = static_cast<const float*>(logits.data_ptr()) + (numel - vocab);
  float best = -std::numeric_limits<float>::infinity(), second = best;
  int32_t arg = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (row[i] > best) {
      second = best;
      best = row[i];
      arg = static_cast<int32_t>(i);
    } else if (row[i] > second) {
      second = row[i];
    }
  }
  return {arg, best - second};
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int Run(int argc, char** argv) {
  std::map<std::string, std::string> opt = {{"--max-tokens", "8"}, {"--context", "1024"}};
  for (int i = 1; i + 1 < argc; i += 2) opt[argv[i]] = argv[i + 1];
  for (const char* key : {"--package", "--lib", "--prompt-ids"})
    if (!opt.count(key)) throw std::runtime_error(std::string("missing ") + key);
  std::vector<int32_t> prompt;
  std::stringstream ids(opt["--prompt-ids"]);
  for (std::string tok; std::getline(ids, tok, ',');) prompt.push_back(std::stoi(tok));
  const int max_tokens = std::stoi(opt["--max-tokens"]);
  const int64_t context = std::stoll(opt["--context"]);
  if (prompt.empty() || max_tokens < 1) throw std::runtime_error("need prompt ids and max-tokens >= 1");
  if (static_cast<int64_t>(prompt.size()) + max_tokens > context)
    throw std::runtime_error("prompt + max-tokens exceed --context");

  auto t0 = std::chrono::steady_clock::now();
  const std::string dir = opt["--package"];
  json::Object manifest = ParseObject(ReadFile(dir + "/manifest.json"), "manifest.json");
  json::Object kv_info = manifest["kv_cache"].cast<json::Object>();

  // The Relax VM, as tvm.relax.VirtualMachine(mod, tvm.cpu()) sets it up: CPU, pooled allocator.
  ffi::Module lib = ffi::Module::LoadFromFile(ffi::String(opt["--lib"]));
  ffi::Module vm = Required(lib, "vm_load_executable")().cast<ffi::Module>();
  Required(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, 2 /* pooled allocator */);
  ffi::Function prefill = Required(vm, "prefill"), decode = Required(vm, "decode");
  ffi::Array<ffi::Tensor> params = LoadParams(
      dir + "/" + std::string(manifest["params_file"].cast<ffi::String>()),
      manifest["param_names"].cast<json::Array>());

  auto shape = [](int64_t v) { return ffi::Shape({v}); };
  ffi::Any kv = Required(vm, "create_tir_paged_kv_cache")(
      shape(1), shape(context), shape(kv_info["prefill_chunk_size"].cast<int64_t>()),
      shape(kv_info["page_size"].cast<int64_t>()), shape(0));
  auto kv_fn = [](const char* name) {
    return ffi::Function::GetGlobalRequired(std::string("vm.builtin.kv_state_") + name);
  };
  ffi::Function add_sequence = kv_fn("add_sequence"), begin_forward = kv_fn("begin_forward"),
                end_forward = kv_fn("end_forward");
  const int64_t seq_id = 0;
  add_sequence(kv, seq_id);
  double load_s = Seconds(t0);

  // One step: begin_forward, prefill/decode(ids, kv, params) -> (logits, kv), end_forward.
  auto step = [&](const ffi::Function& fn, const std::vector<int32_t>& tokens) {
    ffi::Tensor input = Empty({1, static_cast<int64_t>(tokens.size())}, {kDLInt, 32, 1});
    std::memcpy(input.data_ptr(), tokens.data(), tokens.size() * sizeof(int32_t));
    begin_forward(kv, ffi::Shape({seq_id}), ffi::Shape({static_cast<int64_t>(tokens.size())}));
    ffi::Array<ffi::Any> out = fn(input, kv, params).cast<ffi::Array<ffi::Any>>();
    kv = out[1];
    end_forward(kv);
    return Argmax(out[0].cast<ffi::Tensor>());
  };

  std::vector<Pick> picks;
  auto t1 = std::chrono::steady_clock::now();
  picks.push_back(step(prefill, prompt));
  double prefill_s = Seconds(t1);
  auto t2 = std::chrono::steady_clock::now();
  while (static_cast<int>(picks.size()) < max_tokens) picks.push_back(step(decode, {picks.back().token}));
  double decode_s = Seconds(t2);

  std::ostringstream tokens, gaps;
  gaps.precision(9);
  for (size_t i = 0; i < picks.size(); ++i) {
    tokens << (i ? ", " : "") << picks[i].token;
    gaps << (i ? ", " : "") << picks[i].gap;
  }
  std::cout << "{\"tokens\": [" << tokens.str() << "], \"top2_gaps\": [" << gaps.str()
            << "], \"prompt_tokens\": " << prompt.size() << ", \"load_s\": " << load_s
            << ", \"prefill_s\": " << prefill_s << ", \"decode_s\": " << decode_s << "}"
            << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const ffi::Error& e) {
    std::cerr << "pdlink_run: " << e.kind() << ": " << e.message() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "pdlink_run: " << e.what() << std::endl;
  }
  return 1;
}
