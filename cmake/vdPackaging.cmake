# Installs the library (the target behind vd::vd), the public headers, vdConfig.cmake,
# vdConfigVersion.cmake, vdTargets.cmake and vd.pc. Included by the top-level CMakeLists.txt
# when VD_INSTALL is on. See docs/embedding.md, "Building against vd".
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(VD_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/vd" CACHE STRING
    "Where vdConfig.cmake is installed, relative to the prefix")
mark_as_advanced(VD_INSTALL_CMAKEDIR)

install(TARGETS ${VD_INSTALLED_TARGET} EXPORT vdTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} NAMELINK_COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/vd
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
install(EXPORT vdTargets NAMESPACE vd:: DESTINATION ${VD_INSTALL_CMAKEDIR})

if(VD_SHARED)
  set(VD_CONFIG_STATIC OFF)
else()
  set(VD_CONFIG_STATIC ON)
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/vdConfig.cmake.in
  ${PROJECT_BINARY_DIR}/vdConfig.cmake INSTALL_DESTINATION ${VD_INSTALL_CMAKEDIR})
# 0.x: a minor release may break the API, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/vdConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/vdConfig.cmake ${PROJECT_BINARY_DIR}/vdConfigVersion.cmake
  DESTINATION ${VD_INSTALL_CMAKEDIR})

# pkg-config. Private dependencies go to Requires.private/Libs.private: a static libvd needs
# `pkg-config --static --libs vd`; a shared one links them itself.
set(VD_PC_CFLAGS "-DBOOST_ASIO_NO_DEPRECATED")
foreach(dir IN LISTS Boost_INCLUDE_DIRS)
  if(NOT dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES AND NOT dir STREQUAL "/usr/include")
    string(APPEND VD_PC_CFLAGS " -I${dir}")
  endif()
endforeach()
set(VD_PC_LIBS_PRIVATE "")
foreach(lib IN LISTS CMAKE_DL_LIBS)
  string(APPEND VD_PC_LIBS_PRIVATE " -l${lib}")
endforeach()
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(VD_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  set(VD_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(VD_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(VD_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/vd.pc.in ${PROJECT_BINARY_DIR}/vd.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/vd.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
