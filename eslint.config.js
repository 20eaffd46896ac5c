// @ts-check
import tseslint from "typescript-eslint";

export default tseslint.config(
  {
    ignores: [
      "node_modules/",
      "scratch/",
      "native/",
      "coverage/",
      "eslint.config.js",
      "examples/**/*.js",
      "test/agents/**",
    ],
  },
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/switch-exhaustiveness-check": "error",
      "@typescript-eslint/restrict-template-expressions": ["error", { allowNumber: true }],
      // Import cycles and layering are checked by test/architecture.test.ts.
    },
  },
  {
    files: ["**/*.test.ts", "test/**", "bench/**"],
    rules: {
      // node:test's describe/it return promises the runner awaits itself.
      "@typescript-eslint/no-floating-promises": "off",
      "@typescript-eslint/no-non-null-assertion": "off",
    },
  },
);
