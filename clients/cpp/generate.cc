// Generate images through a running Tessera server and write them as PNGs, best first.
//
//   tessera_generate "a small red circle in the top left on a blue background" \
//       --server 127.0.0.1:50051 --num-images 2 --candidates 8 --seed 7 --out out
//   tessera_generate "a red circle" --model mini   # a server of several models: which one draws
//
// Streams the request (GenerateStream): progress on stderr when it is a terminal, then
// one line per image on stdout: its file, CLIP score and seed.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include <grpcpp/grpcpp.h>

#include "tessera/v1/image_generation.grpc.pb.h"

namespace {

constexpr const char* kUsage =
    "usage: tessera_generate PROMPT [--server HOST:PORT] [--num-images N] [--candidates N] "
    "[--seed N] [--model NAME, default the server's first] [--priority N, lower is sooner, default 0] "
    "[--timeout SECONDS] "
    "[--out DIR, default ./tessera-out]\n";

struct Options {
  std::string prompt;
  std::string server = "127.0.0.1:50051";
  uint32_t num_images = 1;
  uint32_t candidates = 0;
  uint64_t seed = 0;
  std::string model;  // empty: the server's first model
  int32_t priority = 0;  // lower is served sooner; the server's graph.priority_range bounds it
  double timeout_s = 300;
  std::string out = "tessera-out";
};

// Parses argv; returns false (after printing why) on a bad or missing argument.
bool Parse(int argc, char** argv, Options* opt) {
  if (const char* env = std::getenv("TESSERA_SERVER")) opt->server = env;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::cerr << "tessera_generate: " << name << " needs a value\n" << kUsage;
        return nullptr;
      }
      return argv[++i];
    };
    try {
      const char* v = nullptr;
      if (arg == "-h" || arg == "--help") {
        std::cout << kUsage;
        std::exit(0);
      } else if (arg == "--server") {
        if (!(v = value("--server"))) return false;
        opt->server = v;
      } else if (arg == "--num-images" || arg == "-n") {
        if (!(v = value("--num-images"))) return false;
        opt->num_images = static_cast<uint32_t>(std::stoul(v));
      } else if (arg == "--candidates") {
        if (!(v = value("--candidates"))) return false;
        opt->candidates = static_cast<uint32_t>(std::stoul(v));
      } else if (arg == "--seed") {
        if (!(v = value("--seed"))) return false;
        opt->seed = std::stoull(v);
      } else if (arg == "--model") {
        if (!(v = value("--model"))) return false;
        opt->model = v;
      } else if (arg == "--priority") {
        if (!(v = value("--priority"))) return false;
        opt->priority = static_cast<int32_t>(std::stoi(v));
      } else if (arg == "--timeout") {
        if (!(v = value("--timeout"))) return false;
        opt->timeout_s = std::stod(v);
      } else if (arg == "--out" || arg == "-o") {
        if (!(v = value("--out"))) return false;
        opt->out = v;
      } else if (!arg.empty() && arg[0] == '-') {
        std::cerr << "tessera_generate: unknown option " << arg << "\n" << kUsage;
        return false;
      } else {
        opt->prompt = arg;
        ++positional;
      }
    } catch (const std::exception&) {
      std::cerr << "tessera_generate: " << arg << " needs a number\n" << kUsage;
      return false;
    }
  }
  if (positional != 1) {
    std::cerr << kUsage;
    return false;
  }
  return true;
}

// The status code's name, as the other clients print it.
const char* StatusName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(sizeof(kNames) / sizeof(kNames[0])) ? kNames[i] : "UNKNOWN";
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!Parse(argc, argv, &opt)) return 2;

  auto channel = grpc::CreateChannel(opt.server, grpc::InsecureChannelCredentials());
  auto stub = tessera::v1::ImageGeneration::NewStub(channel);

  tessera::v1::GenerateRequest request;
  request.set_prompt(opt.prompt);
  request.set_num_images(opt.num_images);
  request.set_num_candidates(opt.candidates);
  request.set_seed(opt.seed);
  request.set_model(opt.model);
  request.set_priority(opt.priority);

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(opt.timeout_s * 1000)));
  auto reader = stub->GenerateStream(&context, request);

  const bool tty = isatty(fileno(stderr));
  tessera::v1::GenerateEvent event;
  tessera::v1::GenerateResponse result;
  bool have_result = false;
  while (reader->Read(&event)) {
    if (event.has_progress()) {
      if (tty) {
        const auto& p = event.progress();
        std::cerr << "\r" << p.stage() << " " << p.completed() << "/" << p.total() << std::flush;
      }
    } else if (event.has_result()) {
      result = event.result();
      have_result = true;
    }
  }
  if (tty) std::cerr << "\n";
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::cerr << "tessera_generate: " << StatusName(status.error_code()) << ": " << status.error_message() << "\n";
    return 1;
  }
  if (!have_result) {
    std::cerr << "tessera_generate: the stream ended without a result\n";
    return 1;
  }

  std::filesystem::create_directories(opt.out);
  for (int rank = 0; rank < result.images_size(); ++rank) {
    const auto& image = result.images(rank);
    std::ostringstream name;
    // "cpp_": the Node and Python clients write to the same default folder under their own names
    name << "cpp_" << std::setw(2) << std::setfill('0') << rank << "_seed" << image.seed() << ".png";
    const std::filesystem::path file = std::filesystem::path(opt.out) / name.str();
    std::ofstream png(file, std::ios::binary);
    png.write(image.png().data(), static_cast<std::streamsize>(image.png().size()));
    if (!png) {
      std::cerr << "tessera_generate: cannot write " << file << "\n";
      return 1;
    }
    std::cout << file.string() << "  clip_score=" << std::fixed << std::setprecision(3) << image.clip_score()
              << " seed=" << image.seed() << "\n";
  }
  return 0;
}
