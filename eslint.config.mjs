// Lint: ESLint's and typescript-eslint's recommended rules over the TypeScript and the scripts.
// Run by `npm run lint`, which the test command runs first (scripts/test.sh).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'build/**', 'prebuilds/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
    rules: {
      // Kernel views and fixtures' JSON are typed where they are used; `any` is allowed at those edges.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true },
      ],
      'no-empty': ['error', { allowEmptyCatch: true }],
      // The state file's YAML layout is matched with its literal indentation, which reads best as spaces.
      'no-regex-spaces': 'off',
      // Prettier (.prettierrc.json, checked by the test command) formats the code at 120 columns; comments are
      // held to the same width. Long strings, templates and regexes are left whole (messages stay greppable).
      'max-len': [
        'error',
        { code: 120, ignoreStrings: true, ignoreTemplateLiterals: true, ignoreRegExpLiterals: true, ignoreUrls: true },
      ],
    },
  },
  {
    files: ['**/*.cjs'],
    languageOptions: { sourceType: 'commonjs' },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
