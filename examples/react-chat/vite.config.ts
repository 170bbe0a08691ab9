// Vite's configuration for the example. No plugin: esbuild compiles the TSX (automatic JSX
// runtime, as tsconfig.json says); a page reload stands in for React's fast refresh.
//
// `vite build` makes the production build. `vite build --mode development` (what
// scripts/client runs, `npm run build:strict`) keeps React's development build, where
// <StrictMode> runs every effect twice: the browser test (tests/react.rs) drives that build,
// to prove useChat opens one connection per mounted component.
import { defineConfig } from "vite";

export default defineConfig(({ mode }) => ({
  // Relative asset URLs: the built app works from any path of any static server.
  base: "./",
  esbuild: { jsx: "automatic" },
  define: mode === "development" ? { "process.env.NODE_ENV": JSON.stringify("development") } : {},
  build: { minify: mode !== "development" },
}));
