"""Linux evdev event types and codes, as virtio-input carries them (VIRTIO 1.3, 5.8: "filled
according to the Linux input layer (evdev) interface"; linux/input-event-codes.h, linux/input.h).

Data only.  :data:`KEYS` and :data:`BUTTONS` map the header's names to codes (``KEY_A`` -> 30);
``tests/test_input_spec.py`` checks every number here against /usr/include/linux.
"""

from enum import IntEnum


class EventType(IntEnum):
    """EV_*: event types (5.8.6)."""

    SYN = 0x00
    KEY = 0x01
    REL = 0x02
    ABS = 0x03
    MSC = 0x04
    SW = 0x05
    LED = 0x11
    SND = 0x12
    REP = 0x14
    FF = 0x15
    PWR = 0x16
    FF_STATUS = 0x17


EV_MAX = 0x1F


class Syn(IntEnum):
    """SYN_* codes of EV_SYN (5.8.6)."""

    REPORT = 0
    CONFIG = 1
    MT_REPORT = 2
    DROPPED = 3


class Rel(IntEnum):
    """REL_* axes of EV_REL (5.8.6)."""

    X = 0x00
    Y = 0x01
    Z = 0x02
    RX = 0x03
    RY = 0x04
    RZ = 0x05
    HWHEEL = 0x06
    DIAL = 0x07
    WHEEL = 0x08
    MISC = 0x09
    WHEEL_HI_RES = 0x0B
    HWHEEL_HI_RES = 0x0C


class Abs(IntEnum):
    """ABS_* axes of EV_ABS, the multitouch ones included (5.8.6; ABS_INFO, 5.8.4)."""

    X = 0x00
    Y = 0x01
    Z = 0x02
    RX = 0x03
    RY = 0x04
    RZ = 0x05
    THROTTLE = 0x06
    RUDDER = 0x07
    WHEEL = 0x08
    GAS = 0x09
    BRAKE = 0x0A
    PRESSURE = 0x18
    DISTANCE = 0x19
    TILT_X = 0x1A
    TILT_Y = 0x1B
    TOOL_WIDTH = 0x1C
    VOLUME = 0x20
    MISC = 0x28
    MT_SLOT = 0x2F
    MT_TOUCH_MAJOR = 0x30
    MT_TOUCH_MINOR = 0x31
    MT_WIDTH_MAJOR = 0x32
    MT_WIDTH_MINOR = 0x33
    MT_ORIENTATION = 0x34
    MT_POSITION_X = 0x35
    MT_POSITION_Y = 0x36
    MT_TOOL_TYPE = 0x37
    MT_BLOB_ID = 0x38
    MT_TRACKING_ID = 0x39
    MT_PRESSURE = 0x3A
    MT_DISTANCE = 0x3B
    MT_TOOL_X = 0x3C
    MT_TOOL_Y = 0x3D


class Msc(IntEnum):
    """MSC_* codes of EV_MSC (5.8.6)."""

    SERIAL = 0x00
    PULSELED = 0x01
    GESTURE = 0x02
    RAW = 0x03
    SCAN = 0x04
    TIMESTAMP = 0x05


class Led(IntEnum):
    """LED_* codes of EV_LED, driver -> device on the statusq (5.8.6)."""

    NUML = 0x00
    CAPSL = 0x01
    SCROLLL = 0x02
    COMPOSE = 0x03
    KANA = 0x04
    SLEEP = 0x05
    SUSPEND = 0x06
    MUTE = 0x07
    MISC = 0x08
    MAIL = 0x09
    CHARGING = 0x0A


class Snd(IntEnum):
    """SND_* codes of EV_SND, driver -> device on the statusq (5.8.6)."""

    CLICK = 0x00
    BELL = 0x01
    TONE = 0x02


class Rep(IntEnum):
    """REP_* codes of EV_REP (5.8.6)."""

    DELAY = 0x00
    PERIOD = 0x01


class InputProp(IntEnum):
    """INPUT_PROP_*: the PROP_BITS bitmap (5.8.4)."""

    POINTER = 0x00
    DIRECT = 0x01
    BUTTONPAD = 0x02
    SEMI_MT = 0x03
    TOPBUTTONPAD = 0x04
    POINTING_STICK = 0x05
    ACCELEROMETER = 0x06


#: The highest code of each type (*_MAX): a bitmap for the type has (max + 8) // 8 bytes.
CODE_MAX: dict[int, int] = {
    EventType.SYN: 0x0F, EventType.KEY: 0x2FF, EventType.REL: 0x0F, EventType.ABS: 0x3F,
    EventType.MSC: 0x07, EventType.SW: 0x10, EventType.LED: 0x0F, EventType.SND: 0x07,
    EventType.REP: 0x01, EventType.FF: 0x7F,
}
INPUT_PROP_MAX = 0x1F

#: BUS_VIRTUAL (linux/input.h): the bus type of devices with no real bus.
BUS_VIRTUAL = 0x06

#: The MT_TOOL_* value of a finger (ABS_MT_TOOL_TYPE).
MT_TOOL_FINGER = 0x00

KEYS: dict[str, int] = {
    "KEY_ESC": 0x1, "KEY_1": 0x2, "KEY_2": 0x3, "KEY_3": 0x4, "KEY_4": 0x5, "KEY_5": 0x6,
    "KEY_6": 0x7, "KEY_7": 0x8, "KEY_8": 0x9, "KEY_9": 0xa, "KEY_0": 0xb, "KEY_MINUS": 0xc,
    "KEY_EQUAL": 0xd, "KEY_BACKSPACE": 0xe, "KEY_TAB": 0xf, "KEY_Q": 0x10, "KEY_W": 0x11,
    "KEY_E": 0x12, "KEY_R": 0x13, "KEY_T": 0x14, "KEY_Y": 0x15, "KEY_U": 0x16, "KEY_I": 0x17,
    "KEY_O": 0x18, "KEY_P": 0x19, "KEY_LEFTBRACE": 0x1a, "KEY_RIGHTBRACE": 0x1b,
    "KEY_ENTER": 0x1c, "KEY_LEFTCTRL": 0x1d, "KEY_A": 0x1e, "KEY_S": 0x1f, "KEY_D": 0x20,
    "KEY_F": 0x21, "KEY_G": 0x22, "KEY_H": 0x23, "KEY_J": 0x24, "KEY_K": 0x25, "KEY_L": 0x26,
    "KEY_SEMICOLON": 0x27, "KEY_APOSTROPHE": 0x28, "KEY_GRAVE": 0x29, "KEY_LEFTSHIFT": 0x2a,
    "KEY_BACKSLASH": 0x2b, "KEY_Z": 0x2c, "KEY_X": 0x2d, "KEY_C": 0x2e, "KEY_V": 0x2f,
    "KEY_B": 0x30, "KEY_N": 0x31, "KEY_M": 0x32, "KEY_COMMA": 0x33, "KEY_DOT": 0x34,
    "KEY_SLASH": 0x35, "KEY_RIGHTSHIFT": 0x36, "KEY_KPASTERISK": 0x37, "KEY_LEFTALT": 0x38,
    "KEY_SPACE": 0x39, "KEY_CAPSLOCK": 0x3a, "KEY_F1": 0x3b, "KEY_F2": 0x3c, "KEY_F3": 0x3d,
    "KEY_F4": 0x3e, "KEY_F5": 0x3f, "KEY_F6": 0x40, "KEY_F7": 0x41, "KEY_F8": 0x42,
    "KEY_F9": 0x43, "KEY_F10": 0x44, "KEY_NUMLOCK": 0x45, "KEY_SCROLLLOCK": 0x46, "KEY_KP7": 0x47,
    "KEY_KP8": 0x48, "KEY_KP9": 0x49, "KEY_KPMINUS": 0x4a, "KEY_KP4": 0x4b, "KEY_KP5": 0x4c,
    "KEY_KP6": 0x4d, "KEY_KPPLUS": 0x4e, "KEY_KP1": 0x4f, "KEY_KP2": 0x50, "KEY_KP3": 0x51,
    "KEY_KP0": 0x52, "KEY_KPDOT": 0x53, "KEY_ZENKAKUHANKAKU": 0x55, "KEY_102ND": 0x56,
    "KEY_F11": 0x57, "KEY_F12": 0x58, "KEY_RO": 0x59, "KEY_KATAKANA": 0x5a, "KEY_HIRAGANA": 0x5b,
    "KEY_HENKAN": 0x5c, "KEY_KATAKANAHIRAGANA": 0x5d, "KEY_MUHENKAN": 0x5e, "KEY_KPJPCOMMA": 0x5f,
    "KEY_KPENTER": 0x60, "KEY_RIGHTCTRL": 0x61, "KEY_KPSLASH": 0x62, "KEY_SYSRQ": 0x63,
    "KEY_RIGHTALT": 0x64, "KEY_LINEFEED": 0x65, "KEY_HOME": 0x66, "KEY_UP": 0x67,
    "KEY_PAGEUP": 0x68, "KEY_LEFT": 0x69, "KEY_RIGHT": 0x6a, "KEY_END": 0x6b, "KEY_DOWN": 0x6c,
    "KEY_PAGEDOWN": 0x6d, "KEY_INSERT": 0x6e, "KEY_DELETE": 0x6f, "KEY_MACRO": 0x70,
    "KEY_MUTE": 0x71, "KEY_VOLUMEDOWN": 0x72, "KEY_VOLUMEUP": 0x73, "KEY_POWER": 0x74,
    "KEY_KPEQUAL": 0x75, "KEY_KPPLUSMINUS": 0x76, "KEY_PAUSE": 0x77, "KEY_SCALE": 0x78,
    "KEY_KPCOMMA": 0x79, "KEY_HANGEUL": 0x7a, "KEY_HANJA": 0x7b, "KEY_YEN": 0x7c,
    "KEY_LEFTMETA": 0x7d, "KEY_RIGHTMETA": 0x7e, "KEY_COMPOSE": 0x7f, "KEY_STOP": 0x80,
    "KEY_AGAIN": 0x81, "KEY_PROPS": 0x82, "KEY_UNDO": 0x83, "KEY_FRONT": 0x84, "KEY_COPY": 0x85,
    "KEY_OPEN": 0x86, "KEY_PASTE": 0x87, "KEY_FIND": 0x88, "KEY_CUT": 0x89, "KEY_HELP": 0x8a,
    "KEY_MENU": 0x8b, "KEY_CALC": 0x8c, "KEY_SETUP": 0x8d, "KEY_SLEEP": 0x8e, "KEY_WAKEUP": 0x8f,
    "KEY_FILE": 0x90, "KEY_SENDFILE": 0x91, "KEY_DELETEFILE": 0x92, "KEY_XFER": 0x93,
    "KEY_PROG1": 0x94, "KEY_PROG2": 0x95, "KEY_WWW": 0x96, "KEY_MSDOS": 0x97, "KEY_COFFEE": 0x98,
    "KEY_ROTATE_DISPLAY": 0x99, "KEY_CYCLEWINDOWS": 0x9a, "KEY_MAIL": 0x9b, "KEY_BOOKMARKS": 0x9c,
    "KEY_COMPUTER": 0x9d, "KEY_BACK": 0x9e, "KEY_FORWARD": 0x9f, "KEY_CLOSECD": 0xa0,
    "KEY_EJECTCD": 0xa1, "KEY_EJECTCLOSECD": 0xa2, "KEY_NEXTSONG": 0xa3, "KEY_PLAYPAUSE": 0xa4,
    "KEY_PREVIOUSSONG": 0xa5, "KEY_STOPCD": 0xa6, "KEY_RECORD": 0xa7, "KEY_REWIND": 0xa8,
    "KEY_PHONE": 0xa9, "KEY_ISO": 0xaa, "KEY_CONFIG": 0xab, "KEY_HOMEPAGE": 0xac,
    "KEY_REFRESH": 0xad, "KEY_EXIT": 0xae, "KEY_MOVE": 0xaf, "KEY_EDIT": 0xb0,
    "KEY_SCROLLUP": 0xb1, "KEY_SCROLLDOWN": 0xb2, "KEY_KPLEFTPAREN": 0xb3,
    "KEY_KPRIGHTPAREN": 0xb4, "KEY_NEW": 0xb5, "KEY_REDO": 0xb6, "KEY_F13": 0xb7, "KEY_F14": 0xb8,
    "KEY_F15": 0xb9, "KEY_F16": 0xba, "KEY_F17": 0xbb, "KEY_F18": 0xbc, "KEY_F19": 0xbd,
    "KEY_F20": 0xbe, "KEY_F21": 0xbf, "KEY_F22": 0xc0, "KEY_F23": 0xc1, "KEY_F24": 0xc2,
    "KEY_PLAYCD": 0xc8, "KEY_PAUSECD": 0xc9, "KEY_PROG3": 0xca, "KEY_PROG4": 0xcb,
    "KEY_ALL_APPLICATIONS": 0xcc, "KEY_SUSPEND": 0xcd, "KEY_CLOSE": 0xce, "KEY_PLAY": 0xcf,
    "KEY_FASTFORWARD": 0xd0, "KEY_BASSBOOST": 0xd1, "KEY_PRINT": 0xd2, "KEY_HP": 0xd3,
    "KEY_CAMERA": 0xd4, "KEY_SOUND": 0xd5, "KEY_QUESTION": 0xd6, "KEY_EMAIL": 0xd7,
    "KEY_CHAT": 0xd8, "KEY_SEARCH": 0xd9, "KEY_CONNECT": 0xda, "KEY_FINANCE": 0xdb,
    "KEY_SPORT": 0xdc, "KEY_SHOP": 0xdd, "KEY_ALTERASE": 0xde, "KEY_CANCEL": 0xdf,
    "KEY_BRIGHTNESSDOWN": 0xe0, "KEY_BRIGHTNESSUP": 0xe1, "KEY_MEDIA": 0xe2,
    "KEY_SWITCHVIDEOMODE": 0xe3, "KEY_KBDILLUMTOGGLE": 0xe4, "KEY_KBDILLUMDOWN": 0xe5,
    "KEY_KBDILLUMUP": 0xe6, "KEY_SEND": 0xe7, "KEY_REPLY": 0xe8, "KEY_FORWARDMAIL": 0xe9,
    "KEY_SAVE": 0xea, "KEY_DOCUMENTS": 0xeb, "KEY_BATTERY": 0xec, "KEY_BLUETOOTH": 0xed,
    "KEY_WLAN": 0xee, "KEY_UWB": 0xef, "KEY_UNKNOWN": 0xf0, "KEY_VIDEO_NEXT": 0xf1,
    "KEY_VIDEO_PREV": 0xf2, "KEY_BRIGHTNESS_CYCLE": 0xf3, "KEY_BRIGHTNESS_AUTO": 0xf4,
    "KEY_DISPLAY_OFF": 0xf5, "KEY_WWAN": 0xf6, "KEY_RFKILL": 0xf7, "KEY_MICMUTE": 0xf8,
}
BUTTONS: dict[str, int] = {
    "BTN_MISC": 0x100, "BTN_0": 0x100, "BTN_1": 0x101, "BTN_2": 0x102, "BTN_3": 0x103,
    "BTN_4": 0x104, "BTN_5": 0x105, "BTN_6": 0x106, "BTN_7": 0x107, "BTN_8": 0x108,
    "BTN_9": 0x109, "BTN_MOUSE": 0x110, "BTN_LEFT": 0x110, "BTN_RIGHT": 0x111,
    "BTN_MIDDLE": 0x112, "BTN_SIDE": 0x113, "BTN_EXTRA": 0x114, "BTN_FORWARD": 0x115,
    "BTN_BACK": 0x116, "BTN_TASK": 0x117, "BTN_JOYSTICK": 0x120, "BTN_TRIGGER": 0x120,
    "BTN_THUMB": 0x121, "BTN_THUMB2": 0x122, "BTN_TOP": 0x123, "BTN_TOP2": 0x124,
    "BTN_PINKIE": 0x125, "BTN_BASE": 0x126, "BTN_BASE2": 0x127, "BTN_BASE3": 0x128,
    "BTN_BASE4": 0x129, "BTN_BASE5": 0x12a, "BTN_BASE6": 0x12b, "BTN_DEAD": 0x12f,
    "BTN_GAMEPAD": 0x130, "BTN_SOUTH": 0x130, "BTN_EAST": 0x131, "BTN_C": 0x132,
    "BTN_NORTH": 0x133, "BTN_WEST": 0x134, "BTN_Z": 0x135, "BTN_TL": 0x136, "BTN_TR": 0x137,
    "BTN_TL2": 0x138, "BTN_TR2": 0x139, "BTN_SELECT": 0x13a, "BTN_START": 0x13b,
    "BTN_MODE": 0x13c, "BTN_THUMBL": 0x13d, "BTN_THUMBR": 0x13e, "BTN_DIGI": 0x140,
    "BTN_TOOL_PEN": 0x140, "BTN_TOOL_RUBBER": 0x141, "BTN_TOOL_BRUSH": 0x142,
    "BTN_TOOL_PENCIL": 0x143, "BTN_TOOL_AIRBRUSH": 0x144, "BTN_TOOL_FINGER": 0x145,
    "BTN_TOOL_MOUSE": 0x146, "BTN_TOOL_LENS": 0x147, "BTN_TOOL_QUINTTAP": 0x148,
    "BTN_STYLUS3": 0x149, "BTN_TOUCH": 0x14a, "BTN_STYLUS": 0x14b, "BTN_STYLUS2": 0x14c,
    "BTN_TOOL_DOUBLETAP": 0x14d, "BTN_TOOL_TRIPLETAP": 0x14e, "BTN_TOOL_QUADTAP": 0x14f,
    "BTN_WHEEL": 0x150, "BTN_GEAR_DOWN": 0x150, "BTN_GEAR_UP": 0x151, "BTN_DPAD_UP": 0x220,
    "BTN_DPAD_DOWN": 0x221, "BTN_DPAD_LEFT": 0x222, "BTN_DPAD_RIGHT": 0x223,
    "BTN_TRIGGER_HAPPY": 0x2c0, "BTN_TRIGGER_HAPPY1": 0x2c0, "BTN_TRIGGER_HAPPY2": 0x2c1,
    "BTN_TRIGGER_HAPPY3": 0x2c2, "BTN_TRIGGER_HAPPY4": 0x2c3, "BTN_TRIGGER_HAPPY5": 0x2c4,
    "BTN_TRIGGER_HAPPY6": 0x2c5, "BTN_TRIGGER_HAPPY7": 0x2c6, "BTN_TRIGGER_HAPPY8": 0x2c7,
    "BTN_TRIGGER_HAPPY9": 0x2c8, "BTN_TRIGGER_HAPPY10": 0x2c9, "BTN_TRIGGER_HAPPY11": 0x2ca,
    "BTN_TRIGGER_HAPPY12": 0x2cb, "BTN_TRIGGER_HAPPY13": 0x2cc, "BTN_TRIGGER_HAPPY14": 0x2cd,
    "BTN_TRIGGER_HAPPY15": 0x2ce, "BTN_TRIGGER_HAPPY16": 0x2cf, "BTN_TRIGGER_HAPPY17": 0x2d0,
    "BTN_TRIGGER_HAPPY18": 0x2d1, "BTN_TRIGGER_HAPPY19": 0x2d2, "BTN_TRIGGER_HAPPY20": 0x2d3,
    "BTN_TRIGGER_HAPPY21": 0x2d4, "BTN_TRIGGER_HAPPY22": 0x2d5, "BTN_TRIGGER_HAPPY23": 0x2d6,
    "BTN_TRIGGER_HAPPY24": 0x2d7, "BTN_TRIGGER_HAPPY25": 0x2d8, "BTN_TRIGGER_HAPPY26": 0x2d9,
    "BTN_TRIGGER_HAPPY27": 0x2da, "BTN_TRIGGER_HAPPY28": 0x2db, "BTN_TRIGGER_HAPPY29": 0x2dc,
    "BTN_TRIGGER_HAPPY30": 0x2dd, "BTN_TRIGGER_HAPPY31": 0x2de, "BTN_TRIGGER_HAPPY32": 0x2df,
    "BTN_TRIGGER_HAPPY33": 0x2e0, "BTN_TRIGGER_HAPPY34": 0x2e1, "BTN_TRIGGER_HAPPY35": 0x2e2,
    "BTN_TRIGGER_HAPPY36": 0x2e3, "BTN_TRIGGER_HAPPY37": 0x2e4, "BTN_TRIGGER_HAPPY38": 0x2e5,
    "BTN_TRIGGER_HAPPY39": 0x2e6, "BTN_TRIGGER_HAPPY40": 0x2e7,
}
