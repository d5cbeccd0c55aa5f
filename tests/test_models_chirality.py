"""SE(3) tells a real chiral QM9 molecule from its mirror image; E(3) cannot (paper section 3).

The molecule is read from the repository's QM9 sample with a small parser local to this test
(the QM9 pipeline is separate code); RDKit perceives bonds from the geometry and finds a
stereocentre, and the mirror image is checked to have the opposite CIP label.
"""
import tarfile
from pathlib import Path

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds

from invattn.models import QM9Model

SAMPLE = Path(__file__).parent / "data" / "qm9" / "qm9_sample_2000.xyz.tar.bz2"
BOND_TYPE = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3,
             Chem.BondType.AROMATIC: 4}


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def read_xyz(text):
    """Elements and coordinates (angstrom) of one QM9 .xyz file (Mathematica '*^' exponents)."""
    lines = text.splitlines()
    n = int(lines[0])
    atoms = [line.split() for line in lines[2:2 + n]]
    return [a[0] for a in atoms], [[float(c.replace("*^", "e")) for c in a[1:4]] for a in atoms]


def rdkit_molecule(elements, coords):
    # Fixed-point coordinates: RDKit's XYZ reader rejects exponents such as 5.7e-05.
    block = f"{len(elements)}\n\n" + "\n".join(
        f"{e} {x:.8f} {y:.8f} {z:.8f}" for e, (x, y, z) in zip(elements, coords))
    mol = Chem.MolFromXYZBlock(block)
    if mol is None:
        raise ValueError("RDKit could not read the XYZ block")
    rdDetermineBonds.DetermineBonds(mol, charge=0)
    Chem.AssignStereochemistryFrom3D(mol)
    return mol


def centres(mol):
    return Chem.FindMolChiralCenters(mol, includeUnassigned=True, useLegacyImplementation=False)


@pytest.fixture(scope="module")
def chiral_molecule():
    with tarfile.open(SAMPLE) as archive:
        for member in archive:
            if not member.isfile():
                continue
            elements, coords = read_xyz(archive.extractfile(member).read().decode())
            try:
                mol = rdkit_molecule(elements, coords)
            except ValueError:  # bond perception can fail on a few molecules; skip those
                continue
            if centres(mol):
                return member.name, mol, coords
    raise AssertionError(f"no molecule with a stereocentre in {SAMPLE}")


def model_inputs(mol, coords):
    n = mol.GetNumAtoms()
    z = torch.tensor([[atom.GetAtomicNum() for atom in mol.GetAtoms()]])
    bonds = torch.zeros(1, n, n, dtype=torch.long)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[0, i, j] = bonds[0, j, i] = BOND_TYPE[bond.GetBondType()]
    return z, torch.tensor([coords], dtype=torch.float64), bonds


def test_mirror_image_has_opposite_label(chiral_molecule):
    name, mol, coords = chiral_molecule
    mirrored = rdkit_molecule([a.GetSymbol() for a in mol.GetAtoms()], [[-x, y, z] for x, y, z in coords])
    flip = {"R": "S", "S": "R"}
    assert [(i, flip[label]) for i, label in centres(mol)] == centres(mirrored), name


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_only_se3_distinguishes_enantiomers(chiral_molecule, group):
    name, mol, coords = chiral_molecule
    z, x, bonds = model_inputs(mol, coords)
    torch.manual_seed(41)
    model = QM9Model(group=group).double()  # paper-sized: 7 layers, 8 heads, sum pooling
    y = model(z, x, bonds)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    y_mirror = model(z, x @ mirror.T, bonds)
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    rotation = q * torch.sign(torch.diagonal(r))
    rotation = rotation * torch.linalg.det(rotation)  # make it proper (det = +1)
    y_rotated = model(z, x @ rotation.T + 5.0, bonds)
    assert y.abs().item() > 1e-3  # not trivially zero
    assert (y_rotated - y).abs().item() < 1e-10  # a rotated copy is the same molecule
    if group == "SE3":
        assert (y_mirror - y).abs().item() > 1e-4, f"{name}: SE(3) model blind to chirality"
    else:
        assert (y_mirror - y).abs().item() < 1e-10, f"{name}: E(3) model must not see chirality"
