// Memory reuse for the objects of the data path (issue 13: no heap allocation per request).
//
// Recycled<T>: a base that gives T a class operator new/delete keeping freed objects on a
// per-thread free list (BlockCache), as Asio's recycling allocator does for its handlers;
// RecyclingAllocator does the same for containers and shared_ptr control blocks. A request object
// is made and destroyed on its image's executor (one thread), so after a warm-up every `new T`
// takes back the memory of a finished one. At most kKeep per thread and type are kept; the
// list is freed when its thread ends.
//
// SlotAllocator: an allocator over a buffer inside an object that lives longer than what is
// put there (a request's storage for the Asio operation that carries it to another thread and
// back). Bigger requests than the slot go to the heap.
#pragma once

#include <cstddef>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define VD_RECYCLE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VD_RECYCLE_ASAN 1
#endif
#endif
#if defined(VD_RECYCLE_ASAN)
#include <sanitizer/asan_interface.h>
#define VD_RECYCLE_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define VD_RECYCLE_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define VD_RECYCLE_POISON(p, n) ((void)(p), (void)(n))
#define VD_RECYCLE_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace vd::detail {

// The per-thread free list of blocks of one size and alignment.
template <std::size_t Size, std::size_t Align>
class BlockCache {
 public:
  static void* take() {
    if (!dead()) {
      Cache& c = cache();
      if (Node* p = c.head) {
        c.head = p->next;
        --c.count;
        VD_RECYCLE_UNPOISON(p, Size);
        return p;
      }
    }
    return ::operator new(Size, std::align_val_t{Align});
  }
  static void give(void* p) noexcept {
    if (!dead()) {
      Cache& c = cache();
      if (c.count < kKeep) {
        c.head = ::new (p) Node{c.head};
        ++c.count;
        // A use after free of a recycled object still trips AddressSanitizer.
        VD_RECYCLE_POISON(static_cast<std::byte*>(p) + sizeof(Node), Size - sizeof(Node));
        return;
      }
    }
    ::operator delete(p, std::align_val_t{Align});
  }

 private:
  static constexpr std::size_t kKeep = 1024;
  struct Node {
    Node* next;
  };
  static_assert(Size >= sizeof(Node));
  struct Cache {
    Node* head = nullptr;
    std::size_t count = 0;
    ~Cache() {
      dead() = true;  // blocks freed later on this thread (thread exit) go to the heap
      while (head) {
        Node* n = head;
        head = n->next;
        VD_RECYCLE_UNPOISON(n, Size);
        ::operator delete(n, std::align_val_t{Align});
      }
    }
  };
  static Cache& cache() {
    thread_local Cache c;
    return c;
  }
  // Trivially destructible, so it can still be read while the thread's objects are destroyed.
  static bool& dead() {
    thread_local bool d = false;
    return d;
  }
};

template <class T>
using BlockCacheOf = BlockCache<(sizeof(T) < sizeof(void*) ? sizeof(void*) : sizeof(T)),
                                (alignof(T) < alignof(void*) ? alignof(void*) : alignof(T))>;

template <class T>
class Recycled {
 public:
  static void* operator new(std::size_t n) {
    if (n == sizeof(T)) return BlockCacheOf<T>::take();
    return ::operator new(n);
  }
  static void operator delete(void* p, std::size_t n) noexcept {
    if (!p) return;
    if (n == sizeof(T)) return BlockCacheOf<T>::give(p);
    ::operator delete(p);
  }
};

// A standard allocator over the same per-thread free lists, for single objects (the nodes of
// a node-based container, shared_ptr control blocks); arrays go to the heap.
template <class T>
struct RecyclingAllocator {
  using value_type = T;
  RecyclingAllocator() noexcept = default;
  template <class U>
  RecyclingAllocator(const RecyclingAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n == 1) return static_cast<T*>(BlockCacheOf<T>::take());
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{alignof(T)}));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n == 1) return BlockCacheOf<T>::give(p);
    ::operator delete(p, std::align_val_t{alignof(T)});
  }
  template <class U>
  bool operator==(const RecyclingAllocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const RecyclingAllocator<U>&) const noexcept {
    return false;
  }
};

template <class T>
struct SlotAllocator {
  using value_type = T;
  void* slot;
  std::size_t size;
  SlotAllocator(void* s, std::size_t n) noexcept : slot(s), size(n) {}
  template <class U>
  SlotAllocator(const SlotAllocator<U>& o) noexcept : slot(o.slot), size(o.size) {}
  T* allocate(std::size_t n) {
    if (n * sizeof(T) <= size && alignof(T) <= alignof(std::max_align_t)) return static_cast<T*>(slot);
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t) noexcept {
    if (p != slot) ::operator delete(p);
  }
  template <class U>
  bool operator==(const SlotAllocator<U>& o) const noexcept {
    return slot == o.slot;
  }
  template <class U>
  bool operator!=(const SlotAllocator<U>& o) const noexcept {
    return slot != o.slot;
  }
};

}  // namespace vd::detail
