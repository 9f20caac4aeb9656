{
  "target_defaults": {
    "cflags!": [
      "-fno-exceptions"
    ],
    "cflags_cc!": [
      "-fno-exceptions",
      "-std=gnu++17"
    ],
    "cflags": [
      "-O3",
      "-fvisibility=hidden"
    ],
    "cflags_cc": [
      "-std=c++20",
      "-fexceptions",
      "-O3",
      "-fvisibility=hidden"
    ],
    "include_dirs": [
      "<!(node -p \"require('node-addon-api').include_dir\")",
      "native"
    ],
    "defines": [
      "NAPI_VERSION=8",
      "NODE_ADDON_API_CPP_EXCEPTIONS",
      "NODE_ADDON_API_CPP_EXCEPTIONS_ALL",
      "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
      "PEFT_BUILD_NAME=\"node-gyp\""
    ]
  },
  "targets": [
    {
      "target_name": "node_peft",
      "sources": [
        "<!@(node scripts/list-sources.mjs base --relative-to . --arch <(target_arch))"
      ],
      "conditions": [
        [
          "target_arch=='x64'",
          {
            "dependencies": [
              "peft_avx2",
              "peft_avx512",
              "peft_avx512bf16",
              "peft_amx"
            ]
          }
        ]
      ],
      "libraries": [
        "-lpthread"
      ],
      "ldflags": [
        "-static-libstdc++",
        "-static-libgcc"
      ]
    }
  ],
  "conditions": [
    [
      "target_arch=='x64'",
      {
        "targets": [
          {
            "target_name": "peft_avx2",
            "type": "static_library",
            "sources": [
              "<!@(node scripts/list-sources.mjs avx2 --relative-to . --arch <(target_arch))"
            ],
            "cflags_cc": [
              "-mavx2",
              "-mfma",
              "-mf16c"
            ]
          },
          {
            "target_name": "peft_avx512",
            "type": "static_library",
            "sources": [
              "<!@(node scripts/list-sources.mjs avx512 --relative-to . --arch <(target_arch))"
            ],
            "cflags_cc": [
              "-mavx2",
              "-mfma",
              "-mf16c",
              "-mavx512f",
              "-mavx512bw",
              "-mavx512dq",
              "-mavx512vl"
            ]
          },
          {
            "target_name": "peft_avx512bf16",
            "type": "static_library",
            "sources": [
              "<!@(node scripts/list-sources.mjs avx512bf16 --relative-to . --arch <(target_arch))"
            ],
            "cflags_cc": [
              "-mavx2",
              "-mfma",
              "-mf16c",
              "-mavx512f",
              "-mavx512bw",
              "-mavx512dq",
              "-mavx512vl",
              "-mavx512bf16",
              "-mavx512vnni"
            ]
          },
          {
            "target_name": "peft_amx",
            "type": "static_library",
            "sources": [
              "<!@(node scripts/list-sources.mjs amx --relative-to . --arch <(target_arch))"
            ],
            "cflags_cc": [
              "-mavx2",
              "-mfma",
              "-mf16c",
              "-mavx512f",
              "-mavx512bw",
              "-mavx512dq",
              "-mavx512vl",
              "-mavx512bf16",
              "-mavx512vnni",
              "-mamx-tile",
              "-mamx-bf16",
              "-mamx-int8"
            ]
          }
        ]
      }
    ]
  ]
}
