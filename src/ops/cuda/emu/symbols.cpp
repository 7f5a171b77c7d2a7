// cuda-emu's kernel names for its messages: the function symbol containing the kernel's
// address, read from the ELF symbol table of the executable or library that holds it, and
// demangled. dladdr() alone would not do: it sees only exported dynamic symbols, and our
// kernels live in static libraries, often in anonymous namespaces. A stripped binary falls
// back to its dynamic symbols, then to the address and the kernel's type.

#include <cxxabi.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "internal.h"

namespace um_emu::detail {
namespace {

std::string demangle(const std::string& symbol) {
  int status = 0;
  char* name = abi::__cxa_demangle(symbol.c_str(), nullptr, nullptr, &status);
  std::string result = status == 0 && name ? name : symbol;
  free(name);
  return result;
}

struct LoadedObject {
  uintptr_t address;  // what to look for
  std::string path;   // the file holding it
  uintptr_t bias;     // its load address minus its link-time address
  bool found = false;
};

int find_object(dl_phdr_info* info, size_t, void* data) {
  auto* object = static_cast<LoadedObject*>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[i];
    const uintptr_t start = info->dlpi_addr + segment.p_vaddr;
    if (segment.p_type == PT_LOAD && object->address - start < segment.p_memsz) {
      // The main program is the object without a name.
      object->path = info->dlpi_name[0] ? info->dlpi_name : "/proc/self/exe";
      object->bias = info->dlpi_addr;
      object->found = true;
      return 1;
    }
  }
  return 0;
}

// The function symbol containing link-time address `address` in an ELF image held in memory,
// or "". Every offset read from the image is checked against its size.
std::string find_symbol(const unsigned char* image, size_t size, uintptr_t address) {
  const auto* header = reinterpret_cast<const ElfW(Ehdr)*>(image);
  if (memcmp(header->e_ident, ELFMAG, SELFMAG) != 0 ||
      header->e_shentsize != sizeof(ElfW(Shdr)) ||
      header->e_shoff + size_t(header->e_shnum) * sizeof(ElfW(Shdr)) > size)
    return "";
  const auto* sections = reinterpret_cast<const ElfW(Shdr)*>(image + header->e_shoff);
  for (const unsigned type : {SHT_SYMTAB, SHT_DYNSYM})  // the full table first
    for (int i = 0; i < header->e_shnum; ++i) {
      const ElfW(Shdr)& table = sections[i];
      if (table.sh_type != type || table.sh_link >= header->e_shnum ||
          table.sh_offset + table.sh_size > size)
        continue;
      const ElfW(Shdr)& strings = sections[table.sh_link];
      if (strings.sh_offset + strings.sh_size > size) continue;
      const auto* symbols = reinterpret_cast<const ElfW(Sym)*>(image + table.sh_offset);
      for (size_t s = 0; s < table.sh_size / sizeof(ElfW(Sym)); ++s) {
        const ElfW(Sym)& symbol = symbols[s];
        if (ELF64_ST_TYPE(symbol.st_info) != STT_FUNC ||
            address - symbol.st_value >= symbol.st_size || symbol.st_name >= strings.sh_size)
          continue;
        const char* name =
            reinterpret_cast<const char*>(image + strings.sh_offset + symbol.st_name);
        return demangle(std::string(name, strnlen(name, strings.sh_size - symbol.st_name)));
      }
    }
  return "";
}

std::string function_symbol(const char* file, uintptr_t address) {
  const int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  struct stat st;
  const size_t size = fstat(fd, &st) == 0 ? size_t(st.st_size) : 0;
  void* image = size >= sizeof(ElfW(Ehdr))
                    ? mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0)
                    : MAP_FAILED;
  close(fd);
  if (image == MAP_FAILED) return "";
  std::string symbol = find_symbol(static_cast<const unsigned char*>(image), size, address);
  munmap(image, size);
  return symbol;
}

}  // namespace

const char* kernel_name(const void* kernel, const std::type_info* type) {
  static std::mutex mutex;
  static std::map<const void*, std::string> names;  // node-based: the strings stay put
  std::lock_guard lock(mutex);
  auto it = names.find(kernel);
  if (it == names.end()) {
    LoadedObject object{reinterpret_cast<uintptr_t>(kernel), "", 0};
    dl_iterate_phdr(find_object, &object);
    std::string name =
        object.found ? function_symbol(object.path.c_str(), object.address - object.bias) : "";
    if (name.empty()) {
      char fallback[64];
      snprintf(fallback, sizeof(fallback), "at %p of type ", kernel);
      name = fallback + demangle(type->name());
    }
    it = names.emplace(kernel, std::move(name)).first;
  }
  return it->second.c_str();
}

}  // namespace um_emu::detail
