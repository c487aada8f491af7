// check-ps-grammar.mjs FILE...: parses each PowerShell file with the
// tree-sitter-powershell grammar (WebAssembly build, through
// web-tree-sitter) and fails on any ERROR or MISSING node, printing where.
// Run by check-ps-grammar.sh, which installs both packages first.
import { readFileSync } from 'node:fs';
import { Parser, Language } from 'web-tree-sitter';

const [wasm, ...files] = process.argv.slice(2);
await Parser.init();
const parser = new Parser();
parser.setLanguage(await Language.load(wasm));

let bad = 0;
for (const file of files) {
  const tree = parser.parse(readFileSync(file, 'utf8'));
  const problems = [];
  const walk = (node) => {
    if (node.isError || node.isMissing) {
      const p = node.startPosition;
      problems.push(`${file}:${p.row + 1}:${p.column + 1}: ${node.isMissing ? 'MISSING ' + node.type : 'ERROR'} near ${JSON.stringify(node.text.slice(0, 60))}`);
      return;
    }
    if (node.hasError) {
      for (const c of node.children) walk(c);
    }
  };
  walk(tree.rootNode);
  if (problems.length > 0) {
    bad++;
    for (const p of problems) console.error(p);
  } else {
    console.log(`${file}: ok`);
  }
}
process.exit(bad === 0 ? 0 : 1);
