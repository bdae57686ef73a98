// xec_onnx_infer: run an xecjax ONNX model with the ONNX Runtime C++ API.
//
//   xec_onnx_infer MODEL.onnx INPUT [--threads N] [--batch B] [--vertex VERTEX]
//
// INPUT holds N events of 4760 x 2 float32 values, event-major then sensor then channel
// (the layout of the ONNX input `input` [batch_size, 4760, 2]):
//   *.bin / *.raw   little-endian float32, no header (numpy: x.astype("<f4").tofile(path))
//   anything else   text, whitespace-separated numbers (numpy: np.savetxt(path, x.reshape(N, -1)))
// What the values must be (normalised features, or raw npho and relative_time) is stated in the
// model metadata `input_kind`; this program prints it. It runs the events in batches of B
// (default: all at once) and prints one line per event: "<index> <theta_deg> <phi_deg>", then
// the other outputs of a multi-task model (energy_GeV, timing_ns, u_cm v_cm w_cm) if present.
// A model with a vertex input (second ONNX input `vertex` [batch_size, 3], the positron vertex
// xyzVTX in cm) needs --vertex VERTEX: N x 3 float32 values in the same formats as INPUT.
// This is the pattern the MEG II analyzer follows; see macro/README.md for the build.

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kSensors = 4760;
constexpr int64_t kChannels = 2;
constexpr int64_t kPerEvent = kSensors * kChannels;

bool EndsWith(const std::string &s, const std::string &suffix)
{
   return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// N events of perEvent float32 values from a .bin / .raw or text file (see the header).
std::vector<float> ReadEvents(const std::string &path, int64_t perEvent = kPerEvent,
                              const char *layout = "events x 4760 sensors x 2 channels")
{
   std::vector<float> values;
   if (EndsWith(path, ".bin") || EndsWith(path, ".raw")) {
      std::ifstream in(path, std::ios::binary | std::ios::ate);
      if (!in) throw std::runtime_error("cannot open input file " + path);
      const std::streamsize bytes = in.tellg();
      if (bytes % static_cast<std::streamsize>(sizeof(float)) != 0)
         throw std::runtime_error(path + ": size is not a multiple of 4 bytes (float32)");
      values.resize(bytes / sizeof(float));
      in.seekg(0);
      in.read(reinterpret_cast<char *>(values.data()), bytes);
   } else {
      std::ifstream in(path);
      if (!in) throw std::runtime_error("cannot open input file " + path);
      float v;
      while (in >> v) values.push_back(v);
      if (!in.eof()) throw std::runtime_error(path + ": not a list of numbers");
   }
   if (values.empty() || values.size() % perEvent != 0) {
      std::ostringstream msg;
      msg << path << ": " << values.size() << " values, expected a positive multiple of "
          << perEvent << " (" << layout << ")";
      throw std::runtime_error(msg.str());
   }
   return values;
}

// The contract of DESIGN.md section 9: input `input` [batch, 4760, 2], output `output` [batch, 2];
// a multi-task model (xecjax.tasks) has more outputs after it: output_energy [batch, 1] (GeV),
// output_timing [batch, 1] (ns), output_uvw [batch, 3] (cm). Returns the output names and
// widths, in the model's order. A second input must be `vertex` [batch, 3] (cm).
std::vector<std::pair<std::string, int64_t>> CheckModel(Ort::Session &session)
{
   Ort::AllocatorWithDefaultOptions alloc;
   const size_t nIn = session.GetInputCount();
   if (nIn < 1 || nIn > 2 || session.GetOutputCount() < 1)
      throw std::runtime_error("model must have one input (plus optionally 'vertex') and at "
                               "least one output");
   if (nIn == 2) {
      const std::string vtx = session.GetInputNameAllocated(1, alloc).get();
      const Ort::TypeInfo vType = session.GetInputTypeInfo(1);
      const auto vInfo = vType.GetTensorTypeAndShapeInfo();
      const auto vShape = vInfo.GetShape();
      if (vtx != "vertex" || vShape.size() != 2 || vShape[1] != 3 ||
          vInfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
         throw std::runtime_error("model second input '" + vtx +
                                  "' is not float32 vertex (batch_size, 3)");
   }
   const std::string in = session.GetInputNameAllocated(0, alloc).get();
   const std::string out = session.GetOutputNameAllocated(0, alloc).get();
   if (in != "input" || out != "output")
      throw std::runtime_error("model input/first output are '" + in + "'/'" + out +
                               "', expected 'input'/'output'");
   // the TypeInfo objects own what their tensor infos point to: keep them alive
   const Ort::TypeInfo inType = session.GetInputTypeInfo(0);
   const auto inInfo = inType.GetTensorTypeAndShapeInfo();
   const auto shape = inInfo.GetShape();
   if (shape.size() != 3 || shape[1] != kSensors || shape[2] != kChannels ||
       inInfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw std::runtime_error("model input is not float32 (batch_size, 4760, 2)");
   std::vector<std::pair<std::string, int64_t>> outputs;
   for (size_t k = 0; k < session.GetOutputCount(); ++k) {
      const std::string name = session.GetOutputNameAllocated(k, alloc).get();
      int64_t want = 0;
      if (name == "output") want = 2;
      else if (name == "output_energy" || name == "output_timing") want = 1;
      else if (name == "output_uvw") want = 3;
      const Ort::TypeInfo outType = session.GetOutputTypeInfo(k);
      const auto outInfo = outType.GetTensorTypeAndShapeInfo();
      const auto outShape = outInfo.GetShape();
      if (want == 0 || outShape.size() != 2 || outShape[1] != want ||
          outInfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
         throw std::runtime_error("model output '" + name + "' is not one of float32 output "
                                  "(batch_size, 2), output_energy / output_timing "
                                  "(batch_size, 1), output_uvw (batch_size, 3)");
      outputs.emplace_back(name, want);
   }
   return outputs;
}

// A whole positive number from a command-line option, or a runtime_error naming the option.
int64_t ParsePositive(const std::string &opt, const std::string &text)
{
   std::size_t used = 0;
   long long value = 0;
   try {
      value = std::stoll(text, &used);
   } catch (const std::exception &) {
      used = 0;
   }
   if (used != text.size() || value <= 0)
      throw std::runtime_error(opt + " '" + text + "': expected a positive integer");
   return value;
}

void PrintMetadata(Ort::Session &session)
{
   Ort::AllocatorWithDefaultOptions alloc;
   Ort::ModelMetadata meta = session.GetModelMetadata();
   for (const char *key : {"input_kind", "run_id", "xecjax_version", "git_commit"}) {
      auto value = meta.LookupCustomMetadataMapAllocated(key, alloc);
      std::cerr << key << ": " << (value ? value.get() : "(not set)") << "\n";
   }
}

}  // namespace

int main(int argc, char **argv)
{
   if (argc < 3) {
      std::cerr << "usage: " << argv[0]
                << " MODEL.onnx INPUT [--threads N] [--batch B] [--vertex VERTEX]\n";
      return 2;
   }
   const std::string modelPath = argv[1], inputPath = argv[2];
   int threads = 1;
   int64_t batch = 0;
   std::string vertexPath;
   if ((argc - 3) % 2 != 0) {
      std::cerr << "xec_onnx_infer: option " << argv[argc - 1] << " needs a value\n";
      return 2;
   }
   try {
      for (int i = 3; i + 1 < argc; i += 2) {
         const std::string opt = argv[i];
         if (opt == "--threads") threads = static_cast<int>(ParsePositive(opt, argv[i + 1]));
         else if (opt == "--batch") batch = ParsePositive(opt, argv[i + 1]);
         else if (opt == "--vertex") vertexPath = argv[i + 1];
         else {
            std::cerr << "xec_onnx_infer: unknown option " << opt << "\n";
            return 2;
         }
      }
   } catch (const std::exception &e) {
      std::cerr << "xec_onnx_infer: " << e.what() << "\n";
      return 2;
   }
   try {
      Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "xec_onnx_infer");
      Ort::SessionOptions options;
      options.SetIntraOpNumThreads(threads);
      options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      Ort::Session session(env, modelPath.c_str(), options);
      const auto outputSpec = CheckModel(session);
      PrintMetadata(session);

      std::vector<float> events = ReadEvents(inputPath);
      const int64_t n = static_cast<int64_t>(events.size()) / kPerEvent;
      if (batch <= 0) batch = n;
      const bool withVertex = session.GetInputCount() == 2;
      if (withVertex != !vertexPath.empty())
         throw std::runtime_error(withVertex ? "the model has a vertex input: pass --vertex FILE "
                                               "(N x 3 float32, xyzVTX in cm)"
                                             : "--vertex given, but the model has no vertex input");
      std::vector<float> vertices;
      if (withVertex) {
         vertices = ReadEvents(vertexPath, 3, "events x 3 vertex coordinates in cm");
         if (static_cast<int64_t>(vertices.size()) / 3 != n)
            throw std::runtime_error(vertexPath + ": " + std::to_string(vertices.size() / 3) +
                                     " vertices for " + std::to_string(n) + " events");
      }
      const char *inputNames[] = {"input", "vertex"};
      std::vector<const char *> outputNames;
      std::string header = "# index theta_deg phi_deg";
      for (const auto &[name, width] : outputSpec) {
         outputNames.push_back(name.c_str());
         if (name == "output_energy") header += " energy_GeV";
         else if (name == "output_timing") header += " timing_ns";
         else if (name == "output_uvw") header += " u_cm v_cm w_cm";
      }
      Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
      std::printf("%s\n", header.c_str());
      for (int64_t start = 0; start < n; start += batch) {
         const int64_t b = std::min(batch, n - start);
         const int64_t shape[] = {b, kSensors, kChannels};
         const int64_t vShape[] = {b, 3};
         std::vector<Ort::Value> inputs;
         inputs.push_back(Ort::Value::CreateTensor<float>(
            memory, events.data() + start * kPerEvent, b * kPerEvent, shape, 3));
         if (withVertex)
            inputs.push_back(Ort::Value::CreateTensor<float>(memory, vertices.data() + start * 3,
                                                             b * 3, vShape, 2));
         auto outputs = session.Run(Ort::RunOptions{nullptr}, inputNames, inputs.data(),
                                    inputs.size(), outputNames.data(), outputNames.size());
         for (int64_t k = 0; k < b; ++k) {
            std::printf("%lld", static_cast<long long>(start + k));
            for (size_t o = 0; o < outputs.size(); ++o) {  // every output, in the model's order
               const float *values = outputs[o].GetTensorData<float>();
               const int64_t width = outputSpec[o].second;
               // angles in degrees with 6 decimals, the task outputs with 7 significant digits
               for (int64_t j = 0; j < width; ++j)
                  std::printf(o == 0 ? " %.6f" : " %.7g", values[width * k + j]);
            }
            std::printf("\n");
         }
      }
   } catch (const std::exception &e) {  // Ort::Exception derives from std::exception
      std::cerr << "xec_onnx_infer: " << e.what() << "\n";
      return 1;
   }
   return 0;
}
