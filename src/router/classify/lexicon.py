"""Concepts: words for the same thing in many languages, so what the model learns from one language
carries over to the others.

``@code`` is one feature that every member (``code``, ``Code``, ``código``, ``код``, ``c:代码``,
``c:코드``...) also counts for, as a stem counts for its inflections. A request in a language with
little training data still meets the concept weights learnt from all the others. Concepts cost
nothing when scoring: a model's concept weights are folded into its members' weights when it is
loaded (:func:`fold`), so a member is one table look-up like any feature.

Members are feature names (:mod:`router.classify.features`): lower-case words, word pairs
(``linked list``), stems (``funct~``: the first five letters of a longer word; ten bytes outside
ASCII), and CJK or Thai characters and character pairs (``c:関数``). Only unambiguous members are
listed: a member that often means something else would teach the concept the wrong thing.

>>> "@code" in concepts_of("c:代码")
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from router.classify.features import DIGITS_TO_ZERO
from router.classify.terms import MATHEMATICS

__all__ = ["CONCEPTS", "add_concepts", "concepts_of", "fold", "is_concept", "members", "validate"]

# concept -> members, grouped by language for review (the language does not matter to the model).
_RAW: dict[str, dict[str, str]] = {
    # --- programming -------------------------------------------------------------------------
    "@code": {
        "en": "code coding codebase snippet", "de": "quellcode", "fr": "code", "es": "código codigo",
        "pt": "código codigo", "it": "codice", "nl": "broncode", "ru": "код кода коде кодом коду",
        "uk": "код коду кодом", "pl": "kod kodu kodem", "tr": "kod kodu kodunu kodda", "id": "kode",
        "ar": "كود الكود", "hi": "कोड", "ko": "c:코드", "zh": "c:代码 c:代碼 c:源码",
    },
    "@program": {
        "en": "program programs programming software", "de": "programm programmiere programmieren",
        "fr": "programmer programmation logiciel", "es": "programar programación",
        "pt": "programar programação", "it": "programmare programmazione", "nl": "programmeren",
        "ru": "программа программу программы программе программирование", "uk": "програма програму",
        "pl": "programować programowanie", "tr": "yazılım", "id": "pemrograman", "vi": "lập trình",
        "ar": "برمجة", "zh": "c:程序 c:编程 c:程式 c:編程",
    },
    "@function": {
        "en": "function functions method", "de": "funktion funktionen methode", "fr": "fonction méthode",
        "es": "función funcion", "pt": "função funcao", "it": "funzione", "nl": "functie",
        "ru": "функц~", "pl": "funkcja funkcję funkcji", "tr": "fonksiyon fonksiyonu",
        "id": "fungsi", "ar": "دالة الدالة", "hi": "फ़ंक्शन फंक्शन", "ja": "c:関数 c:メソ",
        "ko": "c:함수 c:메서 c:메소", "zh": "c:函数 c:函數",
    },
    "@implement": {
        "en": "implement implementation", "de": "implementiere implementieren implementierung",
        "fr": "implémenter implémente implémentation", "es": "implementar implementa implementación",
        "pt": "implementar implementa implementação", "it": "implementare implementa", "nl": "implementeer",
        "ru": "реали~", "uk": "реалі~", "pl": "zaimplementuj implementacja", "id": "implementasi",
        "vi": "triển khai", "ja": "c:実装", "ko": "c:구현", "zh": "c:实现 c:實現",
    },
    "@variable": {
        "en": "variable variables", "pt": "variável", "it": "variabile",
        "ru": "переменная переменной переменную переменные", "uk": "змінн~", "pl": "zmienna zmiennej",
        "tr": "değişken", "ja": "c:変数", "ko": "c:변수", "zh": "c:变量 c:變量",
    },
    "@array": {
        "en": "array arrays dict hashmap", "fr": "tableau", "es": "arreglo lista listas", "pt": "lista listas",
        "de": "liste listen", "it": "lista liste", "ru": "масси~ списк~ списо~ словарь словаря",
        "uk": "масив~", "pl": "tablica tablicę", "tr": "dizi listeyi", "ja": "c:配列", "ko": "c:배열 c:딕셔",
        "zh": "c:数组 c:數組 c:列表", "vi": "danh sách", "hi": "लिस्ट",
    },
    "@string": {
        "en": "string strings substring ascii unicode whitespace uppercase lowercase", "de": "zeichenkette", "fr": "chaîne", "es": "cadena", "it": "stringa stringhe", "ru": "строк~",
        "ja": "c:字列", "ko": "c:자열", "zh": "c:字符", "vi": "chuỗi",
    },
    "@loop": {
        "en": "loop loops recursion recursive iterate", "de": "schleife rekursion",
        "fr": "boucle récursion récursive",
        "es": "bucle recursión recursiva", "pt": "laço recursão", "it": "ricorsione", "ru": "рекур~",
        "pl": "pętla pętli rekurencja", "tr": "döngü", "ja": "c:再帰 c:反復", "ko": "c:반복 c:재귀",
        "zh": "c:循环 c:递归 c:遞迴",
    },
    "@algorithm": {
        "en": "algorithm algorithms", "de": "algorithmus", "fr": "algorithme", "es": "algoritmo",
        "pt": "algoritmo", "it": "algoritmo", "ru": "алгор~", "uk": "алгор~", "pl": "algorytm",
        "tr": "algoritma", "id": "algoritma", "vi": "thuật toán", "ar": "خوارزمية", "ja": "c:ルゴ",
        "ko": "c:알고", "zh": "c:算法",
    },
    "@sort": {
        "en": "sorted sorting", "de": "sortiere sortieren", "fr": "trier", "ru": "сорти~",
        "pl": "sortowanie posortuj",
        "tr": "sırala", "ko": "c:정렬", "zh": "c:排序",
    },
    "@data_structure": {
        "en": "linked list binary tree", "ja": "c:木構", "ko": "c:스택", "zh": "c:链表 c:二叉 c:栈 c:队列",
    },
    "@bug": {
        "en": "bug bugs debug debugging error exception traceback", "de": "fehler fehlermeldung",
        "fr": "bug erreur", "es": "error", "pt": "erro", "it": "errore", "nl": "fout foutmelding",
        "ru": "ошибк~ ошибка баг", "uk": "помил~", "pl": "błąd błędu", "tr": "hata hatası", "id": "kesalahan",
        "vi": "lỗi", "ar": "خطأ", "ja": "c:エラ c:バグ c:例外", "ko": "c:에러 c:오류 c:버그 c:예외",
        "zh": "c:报错 c:錯誤 c:错误 c:异常",
    },
    "@compile": {
        "en": "compile compiler compiles runtime", "de": "kompilieren", "fr": "compilation", "es": "compilar",
        "ru": "компи~", "ja": "c:ンパ", "ko": "c:컴파", "zh": "c:编译 c:編譯",
    },
    "@database": {
        "en": "database sql query queries schema", "de": "datenbank abfrage", "it": "database", "pl": "zapytanie",
        "tr": "veritabanı sorgu", "ja": "c:クエ", "ko": "c:쿼리 c:터베", "zh": "c:数据 c:數據 c:查询 c:查詢",
    },
    "@regex": {
        "en": "regex regexp", "de": "regulärer", "fr": "expression régulière", "es": "expresión regular",
        "ru": "регул~", "ja": "c:正規", "ko": "c:정규", "zh": "c:正则 c:正則",
    },
    "@web": {
        "en": "html css frontend backend website webpage", "ko": "c:웹페 c:웹사",
        "zh": "c:网页 c:網頁 c:网站 c:前端 c:后端",
        "de": "webseite homepage", "fr": "site web", "es": "sitio web página web", "it": "sito web", "nl": "website",
        "ru": "сайт сайта сайте сайтом", "uk": "сайт сайті", "pl": "strona internetowa stronie internetowej",
        "tr": "web sitesi", "id": "situs web", "vi": "trang web", "hi": "वेबसाइट",
    },
    "@server": {
        "en": "server servers api endpoint deploy docker", "es": "servidor", "ru": "серве~", "tr": "sunucu",
        "ja": "c:デプ", "ko": "c:서버 c:배포 c:도커 c:쿠버 c:컨테", "zh": "c:部署",
    },
    "@framework": {
        "en": "framework frameworks module react vue angular django flask laravel rails svelte unity godot pygame "
              "pandas numpy", "ko": "c:리액 c:판다 c:장고 c:유니 c:프링 c:셀레", "zh": "c:框架",
    },
    "@ui": {
        "en": "button buttons checkbox dropdown popup modal navbar hamburger div svg tooltip responsive hover sidebar "
              "thumbnail spinner click clicks clicked clicking scroll scrolls scrolling footer carousel slider "
              "lightbox textbox navbar favicon",
        "de": "schaltfläche klicken klickt scrollen", "fr": "bouton cliquer clique défiler", "es": "botón clic",
        "pt": "botão clicar clique", "it": "pulsante cliccare clicca", "ru": "кнопк~ клик кликнуть", "pl": "kliknięciu",
        "tr": "tıklayınca", "ja": "c:ボタ", "ko": "c:버튼 c:클릭", "zh": "c:按钮 c:按鈕 c:点击 c:點擊",
    },
    "@data_format": {"en": "csv json yaml xml toml timestamp datetime timezone", "zh": "c:戳"},
    "@http": {"en": "http https request requests curl webhook url urls hostname localhost", "ja": "c:リク", "zh": "c:请求 c:請求"},
    "@process": {
        "en": "pid thread threads async await", "ja": "c:スレ c:非同", "ko": "c:스레 c:비동",
        "zh": "c:进程 c:线程 c:异步",
    },
    "@tools": {
        "en": "git github gitlab rebase pip npm yarn conda apt brew vim emacs powershell cli kubectl terraform",
        "ko": "c:깃허 c:리눅",
    },
    "@device": {"en": "arduino esp32 raspberry homeassistant microcontroller"},
    "@shell": {
        "en": "bash", "ko": "c:셸 c:쉘 c:령어 c:크립", "zh": "c:脚本 c:腳本", "de": "skript", "ru": "скрипт скрипта скриптом",
        "pl": "skrypt", "ar": "سكربت سكريبت", "hi": "स्क्रिप्ट", "id": "skrip",
    },
    "@language": {
        "en": "python javascript java typescript golang rust kotlin swift", "ja": "c:イソ", "ko": "c:이썬 c:자바 c:코틀",
    },
    "@spreadsheet": {
        "en": "excel spreadsheet vlookup xlookup google sheets libreoffice", "ko": "c:엑셀",
        "de": "sverweis tabellenkalkulation", "fr": "recherchev tableur", "es": "buscarv", "pt": "procv planilha",
        "it": "cerca vert", "nl": "vert zoeken", "ru": "впр эксель табли~", "pl": "wyszukaj pionowo arkusz",
        "tr": "düşeyara", "vi": "bảng tính", "hi": "एक्सेल", "ar": "إكسل اكسل", "fa": "اکسل", "he": "אקסל",
    },
    "@automate": {
        "en": "automatically automate automation cron", "de": "automatisch automatisieren",
        "fr": "automatiquement automatiser",
        "es": "automáticamente automatizar", "pt": "automaticamente automatizar",
        "it": "automaticamente automatizzare",
        "ru": "автоматически автоматизировать", "uk": "автоматично", "pl": "automatycznie",
        "tr": "otomatik kendiliğinden",
        "id": "otomatis", "vi": "tự động", "ar": "تلقائيا تلقائياً", "hi": "ऑटोमैटिक अपने आप",
        "ko": "c:크롤", "zh": "c:自动",
    },
    "@file": {
        "en": "file files folder directory", "de": "datei dateien ordner verzeichnis",
        "fr": "fichier fichiers dossier",
        "es": "archivo archivos carpeta", "pt": "arquivo arquivos", "it": "cartella",
        "ru": "файл файла файлы файлов папку папке",
        "uk": "файл", "pl": "plik pliku pliki", "tr": "dosya dosyayı klasör", "id": "berkas", "vi": "tệp",
        "ar": "ملف الملف مجلد",
        "hi": "फ़ाइल फाइल", "nl": "bestand bestanden", "he": "קובץ", "cs": "soubor souboru", "fa": "فایل",
        "ro": "fișier fișierul",
    },
    "@oop": {
        "en": "polymorphism encapsulation pointer pointers callback", "de": "polymorphie zeiger",
        "fr": "polymorphisme pointeur",
        "es": "polimorfismo puntero", "pt": "polimorfismo ponteiro", "it": "polimorfismo puntatore",
        "ru": "полиморфизм указатель указатели", "pl": "polimorfizm wskaźnik", "tr": "polimorfizm işaretçi",
        "vi": "con trỏ",
    },
    "@bot": {"en": "bot chatbot telegram discord", "ru": "бот бота ботом", "ar": "بوت", "hi": "बॉट"},
    "@complexity": {
        "en": "complexity big o", "de": "komplexität", "fr": "complexité", "es": "complejidad", "pt": "complexidade",
        "it": "complessità", "pl": "złożoność", "tr": "karmaşıklık", "vi": "độ phức",
    },
    # --- problems to work out ------------------------------------------------------------------
    "@calculate": {
        "en": "calculate compute", "de": "berechne berechnen", "fr": "calculer calcule",
        "es": "calcula calcular", "pt": "calcule calcular", "it": "calcola calcolare", "nl": "bereken",
        "ru": "вычис~ посчитай", "uk": "обчисли обчисліть", "pl": "oblicz", "tr": "hesapla",
        "id": "hitung", "ar": "احسب", "hi": "गणना", "ja": "c:計算 c:求め", "ko": "c:계산 c:구하",
        "zh": "c:计算 c:計算",
    },
    "@solve": {
        "en": "solve", "de": "löse lösen", "fr": "résoudre résous", "es": "resuelve resolver",
        "pt": "resolva resolver", "it": "risolvi risolvere", "ru": "реши решит решите решен~",
        "pl": "rozwiąż", "tr": "çöz", "id": "selesaikan", "ja": "c:解い c:解け", "ko": "c:풀어 c:풀이",
        "zh": "c:解方",
    },
    "@estimate": {
        "en": "estimate fermi", "de": "schätze", "fr": "estime", "es": "estima", "pt": "estimativa", "it": "stima",
        "nl": "schat", "ru": "оцени прикинь", "uk": "оціни", "pl": "oszacuj", "id": "perkirakan", "vi": "ước tính",
        "hi": "अनुमान अंदाज़ा", "ar": "قدّر",
    },
    "@equation": {
        "en": "equation equations inequality", "de": "gleichung ungleichung", "fr": "équation inéquation",
        "es": "ecuación", "pt": "equação", "it": "equazione", "nl": "vergelijking", "ru": "уравн~",
        "uk": "рівня~", "pl": "równanie", "tr": "denklem", "id": "persamaan", "vi": "phương trình",
        "ar": "معادلة", "ja": "c:方程 c:不等", "ko": "c:방정 c:부등", "zh": "c:方程 c:不等",
    },
    "@prove": {
        "en": "prove proof", "de": "beweise beweis", "fr": "démontrer démontre", "es": "demuestra demostrar",
        "pt": "prove demonstre", "it": "dimostra dimostrare", "nl": "bewijs", "ru": "докажи доказ~",
        "uk": "доведи", "pl": "udowodnij", "tr": "kanıtla ispatla", "id": "buktikan", "vi": "chứng minh",
        "ar": "أثبت", "ja": "c:証明", "ko": "c:증명", "zh": "c:证明 c:證明",
        "hi": "सिद्ध",
    },
    "@probability": {
        "en": "probability", "de": "wahrscheinlichkeit", "fr": "probabilité proba", "es": "probabilidad",
        "pt": "probabilidade", "it": "probabilità", "ru": "вероя~", "uk": "ймові~",
        "pl": "prawdopodobieństwo", "tr": "olasılık", "id": "peluang", "vi": "xác suất", "ar": "احتمال",
        "ja": "c:確率", "ko": "c:확률", "zh": "c:概率 c:機率", "hi": "प्रायिकता",
    },
    "@combinatorics": {
        "en": "combinations permutations anagram anagrams", "fr": "combinaisons anagrammes façons",
        "es": "combinaciones anagramas cuántas formas", "ru": "сочет~ способами анагр~ переставляя перестановок",
        "ja": "c:並べ c:何通", "ko": "c:조합 c:순열 경우의 수 방법의 수", "zh": "c:排列 c:组合 c:排法",
        "pl": "sposobów", "tr": "dizilim", "hi": "तरीकों", "vi": "cách xếp", "id": "berapa cara",
        "pt": "quantas maneiras", "it": "quanti modi", "de": "viele möglichkeiten",
    },
    "@number_theory": {
        "en": "divisible remainder integer integers digits", "de": "primzahl teilbar",
        "es": "residuo número primo es primo", "fr": "nombre premier", "pt": "número primo é primo",
        "it": "numero primo è primo",
        "ru": "делит простым числом простое число", "pl": "liczba pierwsza liczbą pierwszą", "tr": "asal sayı asal",
        "id": "bilangan prima", "vi": "nguyên tố", "ja": "c:素数 c:余り c:整数 c:約数 c:倍数", "ko": "c:나머 c:약수 c:배수",
        "zh": "c:素数 c:质数 c:余数 c:整数 c:约数 c:倍数",
        "sv": "primtal", "cs": "prvočíslo", "ro": "număr prim", "uk": "простим числом", "ar": "عدد أولي",
        "he": "ראשוני", "hi": "अभाज्य",
    },
    "@geometry": {
        "en": "triangle radius perimeter hypotenuse", "de": "dreieck winkel", "fr": "triangle",
        "es": "triángulo ángulo", "ru": "треуг~", "ja": "c:三角 c:半径 c:面積 c:角度",
        "ko": "c:삼각 c:지름 c:넓이 c:각도", "zh": "c:三角 c:半径 c:面积 c:角度",
    },
    "@calculus": {
        "en": "derivative integral", "de": "ableitung integral grenzwert", "fr": "dérivée intégrale",
        "es": "derivada integral", "pt": "derivada integral", "it": "derivata integrale",
        "ru": "производная производную интеграл предел", "pl": "pochodna całka", "tr": "türev integral",
        "ja": "c:微分 c:積分 c:極限", "ko": "c:미분 c:적분 c:극한", "zh": "c:导数 c:導數 c:积分 c:積分 c:极限",
    },
    "@sequence": {
        "en": "sequence", "es": "sucesión", "ru": "последовательность последовательности прогрессия",
        "ja": "c:数列 c:級数", "ko": "c:수열 c:급수", "zh": "c:数列 c:數列 c:级数",
    },
    "@rate": {"en": "mph", "ja": "c:速さ c:時速 c:分速 c:割合", "ko": "c:속력 c:시속"},
    "@arithmetic": {
        "en": "multiply multiplied divided fraction fractions numerator denominator", "de": "multipliziere bruch",
        "fr": "multiplier fraction", "es": "multiplicar fracción", "ru": "умнож~ дробь", "ja": "c:分数 c:分母 c:掛け",
        "ko": "c:곱하 c:분수 c:분모", "zh": "c:乘以 c:除以 c:分母",
    },
    "@logic": {
        "en": "puzzle riddle logic deduce syllogism premises premise conclusion", "de": "rätsel logik",
        "fr": "énigme logique",
        "es": "acertijo lógica adivinanza", "pt": "enigma lógica charada", "it": "indovinello logica",
        "ru": "загад~ логик головоломка головоломку",
        "ja": "c:論理 c:パズ c:推論", "ko": "c:논리 c:퍼즐 c:추론", "zh": "c:逻辑 c:邏輯 c:推理 c:谜题",
        "tr": "bilmece", "id": "teka teki", "pl": "zagadka zagadki", "nl": "raadsel", "vi": "câu đố", "ar": "لغز",
        "hi": "पहेली",
    },
    "@argument": {
        "en": "fallacy fallacies", "es": "razonamiento falacia", "pt": "raciocínio falácia", "fr": "raisonnement sophisme",
        "it": "ragionamento", "de": "schlussfolgerung trugschluss", "nl": "redenering", "ru": "рассуждение рассуждении",
        "uk": "міркування", "pl": "rozumowanie wnioskowanie", "cs": "úsudek", "tr": "akıl yürütme çıkarım",
        "id": "penalaran", "vi": "lập luận", "ar": "الاستدلال الاستنتاج", "hi": "तर्क",
    },
    "@percent": {
        "en": "percent percentage", "es": "porcentaje", "pt": "porcentagem percentual", "fr": "pourcentage",
        "it": "percentuale", "de": "prozent", "nl": "procent", "ru": "процент процентов процента процентах", "uk": "відсоток відсотків", "pl": "procent",
        "tr": "yüzde", "id": "persen", "vi": "phần trăm", "ar": "النسبة المئوية", "hi": "प्रतिशत", "ja": "c:何パ",
        "ko": "c:퍼센", "zh": "c:百分",
    },
    "@matrix": {
        "en": "matrix eigenvalue determinant", "de": "matrix", "fr": "matrice", "es": "matriz",
        "ru": "матри~", "ja": "c:行列", "ko": "c:행렬", "zh": "c:矩阵 c:矩陣",
    },
    # --- general: writing, language, chat, everyday ---------------------------------------------
    "@poem": {
        "en": "poem poetry haiku lyrics verse", "de": "gedicht", "fr": "poème", "es": "poema",
        "pt": "poema poesia", "it": "poesia", "nl": "gedicht", "ru": "стих стихо~", "uk": "вірш",
        "pl": "wiersz", "tr": "şiir", "id": "puisi", "vi": "bài thơ", "ar": "قصيدة", "hi": "कविता",
        "ja": "c:俳句 c:歌詞", "ko": "c:가사", "zh": "c:诗 c:詩 c:歌词",
    },
    "@story": {
        "en": "story tale screenplay", "fr": "conte", "es": "cuento", "pt": "conto", "it": "racconto fiaba favola",
        "nl": "verhaal", "ru": "рассказ сказк~", "pl": "opowiadanie bajka bajkę", "tr": "hikaye masal",
        "id": "cerita dongeng",
        "vi": "câu chuyện truyện", "ar": "قصة حكاية", "hi": "कहानी", "ja": "c:物語 c:小説", "ko": "c:소설 c:이야",
        "zh": "c:故事 c:小说 c:小說",
        "de": "märchen",
    },
    "@summarize": {
        "en": "summarize summarise summary", "de": "zusammenfassung zusammenfassen fasse",
        "fr": "résume résumer", "es": "resume resumir resumen", "pt": "resuma resumir resumo",
        "it": "riassumi riassunto", "nl": "samenvatting samenvatten", "ru": "кратко перескажи",
        "uk": "підсумуй стисло",
        "pl": "streść podsumuj", "tr": "özetle özet", "id": "ringkas ringkasan", "vi": "tóm tắt",
        "ar": "لخص لخّص ملخص",
        "ja": "c:要約 c:まと", "ko": "c:요약", "zh": "c:总结 c:總結 c:摘要 c:概括",
        "sv": "sammanfatta", "cs": "shrň", "ro": "rezumă", "hi": "सारांश", "he": "סכם",
    },
    "@extract": {
        "en": "extract pull out", "de": "extrahiere", "fr": "extraire extrais", "es": "extrae extraer saca enumera",
        "pt": "extraia extrair", "it": "estrai", "ru": "выпиши перечисли", "ja": "c:抜き c:抽出", "ko": "c:추출 c:뽑아",
        "zh": "c:提取 c:摘出", "vi": "liệt kê", "ar": "استخرج", "tr": "çıkar", "pl": "wypisz", "uk": "випиши",
    },
    "@translate": {
        "en": "translate translation", "de": "übersetze übersetzen", "fr": "traduire traduis traduction",
        "es": "traduce traducir", "pt": "traduza traduzir", "it": "traduci tradurre", "nl": "vertaal",
        "ru": "переведи перев~", "uk": "переклади", "pl": "przetłumacz", "tr": "çevir", "id": "terjemahkan",
        "vi": "dịch", "ar": "ترجم", "hi": "अनुवाद", "ja": "c:翻訳 c:訳し", "ko": "c:번역", "zh": "c:翻译 c:翻譯",
    },
    "@creative": {
        "en": "slogan joke jokes limerick sonnet essay song", "de": "witz lied aufsatz", "fr": "blague chanson",
        "es": "chiste canción ensayo", "pt": "piada canção redação", "it": "barzelletta canzone",
        "ru": "шутку шутка песню песня", "ja": "c:冗談 c:作文", "ko": "c:농담 c:노래", "zh": "c:笑话 c:作文 c:歌曲 c:口号",
        "vi": "truyện cười", "hi": "चुटकुला", "ar": "نكتة أغنية", "tr": "fıkra şarkı", "pl": "żart piosenka",
        "id": "lelucon lagu pantun",
    },
    "@career": {
        "en": "cover letter interview salary marketing", "de": "bewerbung gehalt verdiene",
        "fr": "entretien salaire gagne",
        "es": "entrevista salario gano", "ru": "собеседование зарплата зарабатываю", "ja": "c:面接 c:給料 c:転職",
        "ko": "c:면접 c:연봉 c:이직", "zh": "c:面试 c:工资 c:跳槽", "pt": "ganho", "it": "guadagno", "pl": "zarabiam",
        "tr": "kazanıyorum", "vi": "lương", "id": "gaji", "ar": "راتبي", "hi": "सैलरी",
    },
    "@letter": {
        "en": "email letter", "es": "correo carta", "pt": "carta", "it": "lettera", "ru": "письмо",
        "tr": "mektup", "ja": "c:手紙", "ko": "c:메일 c:편지", "zh": "c:邮件 c:郵件",
    },
    "@rewrite": {
        "en": "rewrite rephrase proofread paraphrase", "de": "umformulieren", "fr": "reformuler",
        "es": "reescribe", "ru": "переф~", "ja": "c:添削", "ko": "c:교정 c:다듬", "zh": "c:润色 c:改写",
    },
    "@advice": {
        "en": "advice recommend tips suggest", "de": "tipps empfehlen", "fr": "conseils recommander",
        "es": "consejos recomienda", "pt": "dicas recomenda", "it": "consigli", "ru": "посов~ советы",
        "pl": "porady rady", "tr": "tavsiye öneri", "ja": "c:おす", "ko": "c:추천 c:조언", "zh": "c:推荐 c:建议",
        "vi": "lời khuyên", "hi": "सलाह", "ar": "نصيحة نصائح", "id": "saran",
    },
    "@greeting": {
        "en": "hello hey thanks", "de": "hallo danke guten morgen", "fr": "bonjour salut merci bonsoir",
        "es": "hola gracias buenos días",
        "pt": "olá obrigado obrigada bom dia", "it": "ciao grazie buongiorno", "nl": "bedankt hoi",
        "ru": "привет спасибо здравствуйте",
        "uk": "привіт дякую вітаю", "pl": "cześć dziękuję dzień dobry", "tr": "merhaba teşekkürler selam",
        "id": "halo terima selamat pagi",
        "vi": "xin chào cảm ơn chào", "ar": "مرحبا شكرا", "hi": "नमस्ते धन्यवाद",
        "ja": "c:ちは c:がと", "ko": "c:안녕 c:고마 c:감사", "zh": "c:你好 c:谢谢 c:謝謝",
        "fa": "سلام", "sv": "hej", "cs": "ahoj", "ro": "bună", "he": "שלום",
    },
    "@history": {
        "en": "history historical century war", "de": "jahrhundert krieg", "fr": "siècle guerre",
        "es": "siglo guerra", "ru": "истор~ война войны", "ja": "c:歴史 c:世紀 c:戦争", "ko": "c:역사 c:세기 c:전쟁",
        "zh": "c:历史 c:歷史 c:世纪 c:战争",
    },
    "@health": {
        "en": "health doctor symptoms diet", "de": "gesundheit arzt", "fr": "santé médecin",
        "es": "salud médico", "ru": "здоровье врач", "ja": "c:健康 c:病院 c:睡眠", "ko": "c:건강 c:병원 c:수면",
        "zh": "c:健康 c:医生 c:睡眠",
        "vi": "bác sĩ", "tr": "doktor", "pl": "lekarz", "id": "dokter", "ar": "طبيب", "hi": "डॉक्टर", "it": "medico",
        "pt": "médico",
    },
    "@travel": {
        "en": "travel trip itinerary hotel", "de": "reise urlaub", "fr": "voyage vacances", "es": "viaje vacaciones",
        "pt": "viagem férias", "it": "viaggio vacanza vacanze", "ru": "путеш~", "ja": "c:旅行", "ko": "c:여행",
        "zh": "c:旅行 c:旅游",
        "vi": "du lịch", "tr": "seyahat tatil", "pl": "podróż wycieczka", "id": "liburan wisata", "ar": "سفر رحلة",
        "hi": "यात्रा",
    },
    "@recipe": {
        "en": "recipe cook cooking bake", "de": "rezept kochen", "fr": "recette cuisine", "es": "receta cocinar",
        "ru": "рецеп~", "ja": "c:レシ c:料理", "ko": "c:레시 c:요리", "zh": "c:食谱 c:做菜",
    },
}


# Vocabularies: the long tail of a field's terms (router.classify.terms), one concept each.
_VOCABULARIES: dict[str, dict[str, str]] = {"@mathematics": MATHEMATICS}


def _member_name(word: str) -> str:
    """The feature name of a member as written above: ``c:X``/``c:XY`` stay, a word pair keeps its
    space, everything else is a lower-case word or stem, its ASCII digits folded to zeros as the
    tokenizer folds them (``esp32`` is the feature ``esp00``)."""
    if word.startswith("c:"):
        if not 3 <= len(word) <= 4:
            raise ValueError(f"a character member is one or two characters: {word!r}")
        return word
    return word.lower().translate(DIGITS_TO_ZERO)


def _build() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for concept, langs in _RAW.items():
        names: list[str] = []
        for text in langs.values():
            names.extend(_member_name(w) for w in _split(text))
        out[concept] = tuple(dict.fromkeys(names))
    for concept, langs in _VOCABULARIES.items():  # long lists, members separated by "|"
        names = [_member_name(w.strip()) for text in langs.values() for w in text.split("|")]
        out[concept] = tuple(dict.fromkeys(names))
    return out


_PAIRS = frozenset({"linked list", "binary tree", "cover letter", "expression régulière", "expresión regular",
                    "lập trình", "thuật toán", "phương trình", "chứng minh", "xác suất", "bài thơ", "câu chuyện",
                    "tóm tắt", "xin chào", "cảm ơn", "triển khai", "pull out", "número primo", "nombre premier",
                    "numero primo", "простым числом", "простое число", "liczba pierwsza", "liczbą pierwszą",
                    "asal sayı", "bilangan prima", "nguyên tố", "site web", "sitio web", "página web", "sito web",
                    "strona internetowa", "stronie internetowej", "web sitesi", "situs web", "trang web",
                    "google sheets", "cerca vert", "vert zoeken", "wyszukaj pionowo", "bảng tính", "es primo",
                    "é primo", "è primo", "număr prim", "простим числом", "عدد أولي", "teka teki", "câu đố",
                    "guten morgen", "buenos días", "bom dia", "dzień dobry", "selamat pagi", "truyện cười",
                    "du lịch", "bác sĩ", "lời khuyên", "tự động", "big o", "độ phức", "ước tính", "liệt kê",
                    "danh sách", "cách xếp", "berapa cara", "cuántas formas", "quantas maneiras", "quanti modi",
                    "viele möglichkeiten", "अपने आप", "con trỏ", "경우의 수", "방법의 수", "akıl yürütme", "lập luận",
                    "النسبة المئوية", "phần trăm"})


def _split(text: str) -> list[str]:
    """Words of a member list; the known two-word members stay whole."""
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if pair in _PAIRS:
            out.append(pair)
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


CONCEPTS: dict[str, tuple[str, ...]] = _build()
_MEMBER_OF: dict[str, tuple[str, ...]] = {}
for _concept, _members in CONCEPTS.items():
    for _m in _members:
        _MEMBER_OF[_m] = (*_MEMBER_OF.get(_m, ()), _concept)
del _concept, _members, _m


def is_concept(name: str) -> bool:
    """Whether a feature name is a concept: ``@`` and a letter (a symbol run such as ``@`` or
    ``@(`` has no letters, a word no ``@``).

    >>> is_concept("@code"), is_concept("@"), is_concept("@(")
    (True, False, False)
    """
    return name[:1] == "@" and name[1:2].isalpha()


def concepts_of(name: str) -> tuple[str, ...]:
    """The concepts a feature name counts for (usually none)."""
    return _MEMBER_OF.get(name, ())


def members(concept: str) -> tuple[str, ...]:
    return CONCEPTS.get(concept, ())


def add_concepts(features: dict[str, float]) -> None:
    """Add to ``features`` (name -> value) each concept, valued the sum of its members' values."""
    for name, value in list(features.items()):
        for concept in _MEMBER_OF.get(name, ()):
            features[concept] = features.get(concept, 0.0) + value


def fold(weights: Mapping[str, tuple[int, ...]], concepts: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, ...]]:
    """Model weights with each concept's weights added to its members' (members the model has no
    weight for get the concept's alone), and the concepts themselves gone: what scoring looks up.

    >>> fold({"@x": (1, 2), "a": (10, 10)}, {"@x": ["a", "b"]})
    {'a': (11, 12), 'b': (1, 2)}
    """
    out = {name: w for name, w in weights.items() if not is_concept(name)}
    for concept, w in weights.items():
        if not is_concept(concept):
            continue
        for m in concepts.get(concept, ()):
            old = out.get(m)
            out[m] = w if old is None else tuple(a + b for a, b in zip(old, w, strict=True))
    return out


def validate(table: Mapping[str, tuple[str, ...]] = CONCEPTS) -> list[str]:
    """Members that can never be a feature (the tokenizer can't produce them), for the tests."""
    from router.classify.features import names, text_keys

    bad = []
    for concept, mem in table.items():
        for m in mem:
            if m.startswith("c:") or m.endswith("~"):
                continue
            if m not in names(text_keys(m)):
                bad.append(f"{concept}: {m!r}")
    return bad
