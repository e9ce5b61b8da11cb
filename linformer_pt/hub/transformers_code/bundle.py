"""The code an export carries for transformers: modeling_linformer.py and the model sources it imports.

Why: transformers' trust_remote_code loader imports the export's modeling_linformer.py and copies beside it only
the files that it imports relatively (`from .x import y`). So that an export loads where linformer-pt is not
installed (with torch and transformers alone), it carries the package's own model sources: copied from this
package at export time, never a second copy to keep in step, so the export runs the code that trained and its
logits equal linformer-pt's exactly. Each `from linformer_pt.a.b import ...` becomes `from .a_b import ...`,
following imports from modeling_linformer.py. linformer_pt.config and linformer_pt.registry also need Hydra: the
few names the model code takes from them come from SHIM_FILE instead (the checks' own source, a no-op registry).
"""
import ast
import inspect
import re
from pathlib import Path
from typing import Dict, List, Set

import linformer_pt
from linformer_pt.config import check, check_choice

PACKAGE = "linformer_pt"
ROOT = Path(linformer_pt.__file__).parent
ENTRY = Path(__file__).with_name("modeling_linformer.py")
SHIM_FILE = "package_shims"
SHIMMED = {"linformer_pt.config": {"check", "check_choice"}, "linformer_pt.registry": {"register_model"}}
REGISTRY_STUB = '''

def register_model(name: str, config_class: type) -> Callable[[type], type]:
    """linformer-pt's model registry decorator; an export has no registry, so the class is returned unchanged."""
    return lambda cls: cls
'''


def file_name(module: str) -> str:
    """linformer_pt.modules.attention -> modules_attention (the export's files all lie in one folder)."""
    return SHIM_FILE if module in SHIMMED else module[len(PACKAGE) + 1 :].replace(".", "_")


def package_imports(source: str, where: str) -> Set[str]:
    """The linformer_pt modules `source` imports, all as `from linformer_pt.x import names` (checked)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
        if isinstance(node, ast.Import) and any(n.split(".")[0] == PACKAGE for n in names):
            raise RuntimeError(f"{where}: write `from linformer_pt.x import y` so the export can rewrite it")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            missing = set(names) - SHIMMED.get(node.module, set(names))
            if node.module == PACKAGE or missing:
                raise RuntimeError(f"{where}: the export cannot carry {node.module} ({sorted(missing) or names})")
            found.add(node.module)
    return found


def shim_source() -> str:
    """package_shims.py: the config checks' own source and a registry decorator that does nothing."""
    header = '"""Stand-ins for the names the model code takes from linformer_pt.config and linformer_pt.registry."""\n'
    header += "from typing import Any, Callable, List\n\nfrom linformer_pt.errors import UserError\n\n\n"
    return header + inspect.getsource(check) + "\n\n" + inspect.getsource(check_choice) + REGISTRY_STUB


def bundle_sources() -> Dict[str, str]:
    """{file name: source} of modeling_linformer.py and every package module it needs, imports made relative."""
    pending, sources = {"modeling_linformer": ENTRY.read_text(encoding="utf-8")}, {}
    while pending:
        name, source = pending.popitem()
        for module in package_imports(source, name):
            target = file_name(module)
            if target not in sources and target not in pending:
                path = (ROOT / Path(*module.split(".")[1:])).with_suffix(".py")
                pending[target] = shim_source() if module in SHIMMED else path.read_text(encoding="utf-8")
        pattern = r"^(\s*)from (linformer_pt(?:\.\w+)+) import"
        sources[name] = re.sub(pattern, lambda m: f"{m[1]}from .{file_name(m[2])} import", source, flags=re.M)
        if package_imports(sources[name], name):  # the guarantee: nothing in the export imports linformer_pt
            raise RuntimeError(f"{name}: an import of linformer_pt was left in the export's code")
    return sources


def write_bundle(folder: Path) -> List[Path]:
    """Write the self-contained transformers code into `folder`; returns the paths, modeling_linformer.py first."""
    paths = []
    for name, text in sorted(bundle_sources().items(), key=lambda item: item[0] != "modeling_linformer"):
        path = folder / f"{name}.py"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
