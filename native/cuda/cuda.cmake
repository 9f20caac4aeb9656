# The real CUDA kernels (included from CMakeLists.txt when nvcc is found): the same .cu sources the emulated
# build compiles with g++, here built by nvcc for sm_80/sm_90 (+ compute_90 PTX) with cudart linked
# statically, so the addon loads on machines with no driver and reports why CUDA is unavailable.
file(GLOB PEFT_CUDA_SOURCES ${CMAKE_SOURCE_DIR}/native/cuda/*.cu)
target_sources(${PROJECT_NAME} PRIVATE ${PEFT_CUDA_SOURCES})
set_source_files_properties(${PEFT_CUDA_SOURCES} PROPERTIES LANGUAGE CUDA)
set_target_properties(${PROJECT_NAME} PROPERTIES CUDA_STANDARD 17 CUDA_RUNTIME_LIBRARY Static CUDA_SEPARABLE_COMPILATION OFF)
# -Xptxas=-v: ptxas reports registers, shared memory and spills per kernel into the build output;
# scripts/build-native.mjs keeps those lines in build-cmake/ptxas.log for scripts/cuda-check.sh --from-build.
target_compile_options(${PROJECT_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xptxas=-v -Xcompiler=-fPIC -Xcompiler=-fvisibility=hidden>)
target_compile_definitions(${PROJECT_NAME} PRIVATE PEFT_WITH_CUDA_GPU=1)
target_link_libraries(${PROJECT_NAME} PRIVATE CUDA::cudart_static)
