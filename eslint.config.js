// Lint: typescript-eslint's recommended type-aware rules, plus the two that catch
// the bugs a streaming server actually suffers from: dropped promises and misused async callbacks.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["node_modules/", ".tools/", "dist/", "data/", "coverage/", ".tmp/"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: { arguments: false } }],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/require-await": "off",
    },
  },
  { files: ["eslint.config.js"], extends: [tseslint.configs.disableTypeChecked] },
  // The console's browser script (src/console/): plain JavaScript served as is, run by browsers.
  {
    files: ["src/console/assets/**/*.js"],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: {
      sourceType: "script",
      globals: Object.fromEntries(
        [
          "document",
          "location",
          "fetch",
          "navigator",
          "getSelection",
          "setTimeout",
          "setInterval",
          "URLSearchParams",
          "Node",
          "uPlot",
        ].map((name) => [name, "readonly"]),
      ),
    },
  },
);
