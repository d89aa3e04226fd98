// VD_API marks vd's public API: the classes and functions a program or plugin may use from
// libvd. vd is compiled with -fvisibility=hidden, so everything else stays inside the library
// (libvd.so exports only VD_API symbols; vdimg exports the same set to plugins).
#pragma once

#if defined(_WIN32) || defined(__CYGWIN__)
#  if defined(VD_BUILDING)
#    define VD_API __declspec(dllexport)
#  else
#    define VD_API
#  endif
#elif defined(__GNUC__)
#  define VD_API __attribute__((visibility("default")))
#else
#  define VD_API
#endif
