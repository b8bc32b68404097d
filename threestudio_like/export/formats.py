"""File writers of exported meshes: GLB, OBJ (+MTL, PNG), PLY and USDZ.

Every writer takes an :class:`ExportMesh` already in the frame of its format
(:mod:`.frames`) and writes to ``<path>.tmp`` first, then ``os.replace`` moves it in place, so
a reader never sees half a file and a failed export leaves the previous one intact.

Colour conventions:

* **Texture coordinates** are held in the OpenGL/OBJ convention (``v = 0`` at the bottom row of
  the image, ``image`` row 0 at the top). OBJ and USD use that convention as it is; glTF puts
  ``(0, 0)`` at the top-left corner of the image, so the GLB writer stores ``1 - v``.
* **Base colours** are display (sRGB) values. Textures are stored as sRGB PNG as every format
  expects. glTF's ``COLOR_0`` and USD's ``displayColor`` are linear, so vertex colours are
  converted there with the sRGB transfer function (``c / 12.92`` below 0.04045, else
  ``((c + 0.055) / 1.055) ** 2.4``); PLY and OBJ vertex colours are written as sRGB bytes.
* **Materials** are PBR metallic-roughness, fully rough dielectric (metallic 0, roughness 1):
  glTF's default material is metallic, which would show the albedo nearly black. With a
  texture, glTF gets no ``COLOR_0``: glTF multiplies it into the base colour.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Optional, Tuple, get_args

import numpy as np

from threestudio_like.utils.files import atomic_path

ExportFormat = Literal["glb", "obj", "ply", "usdz"]
FORMATS: Tuple[str, ...] = get_args(ExportFormat)
USDZ_EXTRA = "pip install threestudio_like[usdz]"
GENERATOR = "threestudio_like"

_FLOAT, _UINT, _ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 5126, 5125, 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


@dataclass
class ExportMesh:
    """A triangle mesh ready to write, in the frame of the file it goes to."""

    vertices: np.ndarray
    """``[V, 3]`` float32 positions."""
    faces: np.ndarray
    """``[F, 3]`` int64 vertex indices, counter-clockwise seen from outside."""
    normals: np.ndarray
    """``[V, 3]`` float32 unit vertex normals."""
    colours: Optional[np.ndarray] = None
    """``[V, 4]`` uint8 sRGB vertex colours (RGBA)."""
    uvs: Optional[np.ndarray] = None
    """``[V, 2]`` float32 texture coordinates, OpenGL convention (``v = 0`` at the bottom)."""
    image: Optional[np.ndarray] = None
    """``[H, W, 3]`` uint8 sRGB base-colour texture, row 0 at the top."""
    tangents: Optional[np.ndarray] = None
    """``[V, 4]`` float32 unit tangents and handedness (glTF ``TANGENT``), with ``normal_image``."""
    normal_image: Optional[np.ndarray] = None
    """``[H, W, 3]`` uint8 tangent-space normal map (linear, OpenGL/glTF convention: +Y up)."""

    @property
    def textured(self) -> bool:
        return self.uvs is not None and self.image is not None

    @property
    def normal_mapped(self) -> bool:
        return self.textured and self.tangents is not None and self.normal_image is not None


def replace_into(path: str, write: Callable[[str], None]) -> str:
    """``write(tmp)`` then move ``tmp`` over ``path`` (:func:`~threestudio_like.utils.files.atomic_path`:
    the temporary file never outlives a failure)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return path


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB bytes or [0, 1] values -> linear [0, 1] float32."""
    c = np.asarray(rgb, dtype=np.float64)
    if np.asarray(rgb).dtype == np.uint8:
        c = c / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an ``[H, W, 3|4]`` uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- GLB
class _GlbBuffer:
    """The binary chunk of a GLB and the glTF buffer views / accessors that index it."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: List[dict] = []
        self.accessors: List[dict] = []

    def view(self, data: bytes, target: Optional[int] = None) -> int:
        while len(self.blob) % 4:  # every view starts 4-byte aligned
            self.blob.append(0)
        view = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.blob.extend(data)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        dtype = np.float32 if component == _FLOAT else np.uint32
        array = np.ascontiguousarray(array, dtype=dtype)
        acc = {"bufferView": self.view(array.tobytes(), target), "componentType": component,
               "count": int(array.shape[0]), "type": kind}
        if bounds:
            acc["min"] = array.min(axis=0).tolist()
            acc["max"] = array.max(axis=0).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1


def glb_document(mesh: ExportMesh, name: str = "model", double_sided: bool = False) -> Tuple[dict, bytes]:
    """The glTF JSON and binary chunk of ``mesh`` (one node, one primitive, one material);
    ``double_sided``: both faces are shown (scenes seen from inside)."""
    buf = _GlbBuffer()
    attributes = {
        "POSITION": buf.accessor(mesh.vertices, "VEC3", _FLOAT, _ARRAY_BUFFER, bounds=True),
        "NORMAL": buf.accessor(mesh.normals, "VEC3", _FLOAT, _ARRAY_BUFFER),
    }
    pbr: Dict[str, object] = {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                              "roughnessFactor": 1.0}
    gltf: Dict[str, object] = {}
    if mesh.textured:
        uv = np.stack([mesh.uvs[:, 0], 1.0 - mesh.uvs[:, 1]], axis=1)  # glTF: v = 0 at the top
        attributes["TEXCOORD_0"] = buf.accessor(uv, "VEC2", _FLOAT, _ARRAY_BUFFER)
        image_view = buf.view(png_bytes(mesh.image))
        gltf["images"] = [{"bufferView": image_view, "mimeType": "image/png", "name": f"{name}_basecolor"}]
        gltf["samplers"] = [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                             "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}]
        gltf["textures"] = [{"sampler": 0, "source": 0}]
        pbr["baseColorTexture"] = {"index": 0, "texCoord": 0}
        if mesh.normal_mapped:
            attributes["TANGENT"] = buf.accessor(mesh.tangents, "VEC4", _FLOAT, _ARRAY_BUFFER)
            gltf["images"].append({"bufferView": buf.view(png_bytes(mesh.normal_image)), "mimeType": "image/png",
                                   "name": f"{name}_normal"})
            gltf["textures"].append({"sampler": 0, "source": 1})
    elif mesh.colours is not None:
        attributes["COLOR_0"] = buf.accessor(srgb_to_linear(mesh.colours[:, :3]), "VEC3", _FLOAT, _ARRAY_BUFFER)
    indices = buf.accessor(mesh.faces.reshape(-1), "SCALAR", _UINT, _ELEMENT_ARRAY_BUFFER)
    gltf.update({
        "asset": {"version": "2.0", "generator": GENERATOR},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": indices,
                                                  "material": 0, "mode": 4}]}],
        "materials": [{"name": f"{name}_material", "pbrMetallicRoughness": pbr,
                       **({"normalTexture": {"index": 1, "texCoord": 0}} if mesh.normal_mapped else {}),
                       **({"doubleSided": True} if double_sided else {})}],
        "accessors": buf.accessors,
        "bufferViews": buf.views,
        "buffers": [{"byteLength": len(buf.blob)}],
    })
    return gltf, bytes(buf.blob)


def glb_bytes(gltf: dict, blob: bytes) -> bytes:
    """Pack a glTF JSON and its binary chunk as GLB 2.0 (chunks padded to 4 bytes)."""
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    blob = blob + b"\0" * (-len(blob) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text
            + struct.pack("<I4s", len(blob), b"BIN\0") + blob)


def read_glb(path: str) -> Tuple[dict, bytes]:
    """The JSON and binary chunk of a GLB file (for tests and checks)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or version != 2:
        raise ValueError(f"{path} is not a GLB 2.0 file.")
    length, _ = struct.unpack_from("<I4s", data, 12)
    gltf = json.loads(data[20:20 + length])
    offset = 20 + length
    blob = b""
    if offset < len(data):
        blen, _ = struct.unpack_from("<I4s", data, offset)
        blob = data[offset + 8: offset + 8 + blen]
    return gltf, blob


def glb_accessor(gltf: dict, blob: bytes, index: int) -> np.ndarray:
    """An accessor of a (tightly packed) GLB as an array (float32 or uint32)."""
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    dtype = {_FLOAT: np.float32, _UINT: np.uint32}[acc["componentType"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(blob, dtype=dtype, count=acc["count"] * width, offset=start).reshape(acc["count"], width)


def write_glb(path: str, mesh: ExportMesh, name: str = "model", double_sided: bool = False) -> str:
    """Binary glTF 2.0 with a PBR metallic-roughness material (and embedded texture)."""
    data = glb_bytes(*glb_document(mesh, name, double_sided))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return replace_into(path, write)


# ---------------------------------------------------------------------------------------- OBJ
def write_texture(path: str, image: np.ndarray) -> str:
    """The base-colour texture as PNG."""
    data = png_bytes(image)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return replace_into(path, write)


def write_obj(path: str, mesh: ExportMesh, texture: Optional[str] = None, frame_note: str = "",
              normal_texture: Optional[str] = None) -> List[str]:
    """Wavefront OBJ with ``vt``/``vn``, ``mtllib``/``usemtl`` and an MTL next to it whose
    ``map_Kd`` names ``texture`` (a PNG written beforehand) and ``map_Bump`` the tangent-space
    ``normal_texture`` (Blender's importer reads ``map_Bump`` as a normal map; OBJ stores no
    tangents, so importers compute them from the UVs); vertex colours (``v x y z r g b``) when the
    mesh has no texture. Returns the paths written (OBJ first)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    mtl_path = os.path.join(os.path.dirname(path), f"{stem}.mtl")
    mtl = [f"# {GENERATOR}", f"newmtl {stem}_material", "Ka 0 0 0", "Kd 1 1 1", "Ks 0 0 0", "d 1", "illum 1"]
    if mesh.textured and texture:
        mtl.append(f"map_Kd {os.path.basename(texture)}")
        if normal_texture:
            mtl.append(f"map_Bump {os.path.basename(normal_texture)}")

    def write_mtl(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(mtl) + "\n")

    replace_into(mtl_path, write_mtl)
    textured = mesh.textured and texture is not None

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"# {GENERATOR} {frame_note}\nmtllib {stem}.mtl\no {stem}\n")
            if mesh.colours is not None and not textured:
                rgb = mesh.colours[:, :3].astype(np.float32) / 255.0
                rows = np.concatenate([mesh.vertices, rgb], axis=1)
                np.savetxt(f, rows, fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
            else:
                np.savetxt(f, mesh.vertices, fmt="v %.6f %.6f %.6f")
            if textured:
                np.savetxt(f, mesh.uvs, fmt="vt %.6f %.6f")
            np.savetxt(f, mesh.normals, fmt="vn %.5f %.5f %.5f")
            f.write(f"usemtl {stem}_material\n")
            idx = mesh.faces + 1
            if textured:
                corners = np.repeat(idx, 3, axis=1)  # v/vt/vn share one index per corner
                np.savetxt(f, corners, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
            else:
                np.savetxt(f, np.repeat(idx, 2, axis=1), fmt="f %d//%d %d//%d %d//%d")

    replace_into(path, write)
    return [path, mtl_path] + ([texture] if textured else []) + ([normal_texture] if textured and normal_texture else [])


# ---------------------------------------------------------------------------------------- PLY
def write_ply(path: str, mesh: ExportMesh) -> str:
    """Binary little-endian PLY: positions, normals and RGBA vertex colours."""
    colours = mesh.colours if mesh.colours is not None else np.full((len(mesh.vertices), 4), 255, np.uint8)
    vertex = np.empty(len(mesh.vertices), dtype=[("p", "<f4", 3), ("n", "<f4", 3), ("c", "u1", 4)])
    vertex["p"], vertex["n"], vertex["c"] = mesh.vertices, mesh.normals, colours
    face = np.empty(len(mesh.faces), dtype=[("k", "u1"), ("i", "<i4", 3)])
    face["k"], face["i"] = 3, mesh.faces
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", f"comment {GENERATOR}",
        f"element vertex {len(vertex)}",
        "property float x", "property float y", "property float z",
        "property float nx", "property float ny", "property float nz",
        "property uchar red", "property uchar green", "property uchar blue", "property uchar alpha",
        f"element face {len(face)}", "property list uchar int vertex_indices", "end_header",
    ]) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(vertex.tobytes())
            f.write(face.tobytes())

    return replace_into(path, write)


# --------------------------------------------------------------------------------------- USDZ
def usd_available() -> bool:
    """Whether usd-core (``pxr``) can be imported."""
    try:
        import pxr  # noqa: F401
    except ImportError:
        return False
    return True


def write_usdz(path: str, mesh: ExportMesh, name: str = "model") -> str:
    """USDZ for AR viewers (+Y up, metres): a UsdGeom mesh with a UsdPreviewSurface material
    whose diffuse colour reads the texture through ``st`` (or ``displayColor`` without one)."""
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, Vt

    work = tempfile.mkdtemp(prefix=".usdz-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        stage_path = os.path.join(work, f"{name}.usdc")
        stage = Usd.Stage.CreateNew(stage_path)
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, f"/{name}")
        stage.SetDefaultPrim(root.GetPrim())
        geom = UsdGeom.Mesh.Define(stage, f"/{name}/mesh")
        geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(mesh.vertices, np.float32)))
        geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(mesh.faces), 3, np.int32)))
        geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(mesh.faces.reshape(-1).astype(np.int32)))
        geom.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(mesh.normals, np.float32)))
        geom.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
        geom.CreateExtentAttr([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))])
        primvars = UsdGeom.PrimvarsAPI(geom)
        material = UsdShade.Material.Define(stage, f"/{name}/material")
        surface = UsdShade.Shader.Define(stage, f"/{name}/material/surface")
        surface.CreateIdAttr("UsdPreviewSurface")
        surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
        surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)
        diffuse = surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
        reader = UsdShade.Shader.Define(stage, f"/{name}/material/reader")
        if mesh.textured:
            os.makedirs(os.path.join(work, "textures"))
            st = primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
            st.Set(Vt.Vec2fArray.FromNumpy(np.ascontiguousarray(mesh.uvs, np.float32)))
            write_texture(os.path.join(work, "textures", f"{name}.png"), mesh.image)
            reader.CreateIdAttr("UsdPrimvarReader_float2")
            reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("st")
            texture = UsdShade.Shader.Define(stage, f"/{name}/material/basecolor")
            texture.CreateIdAttr("UsdUVTexture")
            texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"textures/{name}.png")
            texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
            texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(
                reader.ConnectableAPI(), "result")
            diffuse.ConnectToSource(texture.ConnectableAPI(), "rgb")
            if mesh.normal_mapped:  # tangent space, decoded by scale 2 and bias -1 (linear data)
                write_texture(os.path.join(work, "textures", f"{name}_normal.png"), mesh.normal_image)
                bump = UsdShade.Shader.Define(stage, f"/{name}/material/normal")
                bump.CreateIdAttr("UsdUVTexture")
                bump.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"textures/{name}_normal.png")
                bump.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("raw")
                bump.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2.0, 2.0, 2.0, 1.0))
                bump.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1.0, -1.0, -1.0, 0.0))
                bump.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
                surface.CreateInput("normal", Sdf.ValueTypeNames.Normal3f).ConnectToSource(
                    bump.ConnectableAPI(), "rgb")
        else:
            colours = mesh.colours if mesh.colours is not None else np.full((len(mesh.vertices), 4), 255, np.uint8)
            geom.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(
                Vt.Vec3fArray.FromNumpy(srgb_to_linear(colours[:, :3])))
            reader.CreateIdAttr("UsdPrimvarReader_float3")
            reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("displayColor")
            diffuse.ConnectToSource(reader.ConnectableAPI(), "result")
        material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
        UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
        stage.GetRootLayer().Save()
        # The package: the stage first, then its textures under the same relative paths
        # (ZipFileWriter stores them uncompressed and 64-byte aligned, as USDZ requires).
        package = os.path.join(work, f"{name}.usdz")
        writer = Sdf.ZipFileWriter.CreateNew(package)
        writer.AddFile(stage_path, f"{name}.usdc")
        for texture_name in sorted(os.listdir(os.path.join(work, "textures"))) if mesh.textured else []:
            writer.AddFile(os.path.join(work, "textures", texture_name), f"textures/{texture_name}")
        writer.Save()
        return replace_into(path, lambda tmp: shutil.copyfile(package, tmp))
    finally:
        shutil.rmtree(work, ignore_errors=True)
